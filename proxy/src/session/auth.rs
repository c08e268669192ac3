//! SMTP AUTH (RFC 4954): the checks every mode shares (offered, sequence, TLS,
//! throttling, mechanism), then either the proxy verifies the credentials itself
//! (`edge`) or relays the exchange to the upstream (`passthrough`). After a verified
//! login the AUTH hook of the plugin chain may still refuse it. Passwords stay in a
//! [`crate::auth::Secret`]; no log line here carries a response line.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::{Flow, Session, replies, state::Login};
use crate::{
    auth::{
        Check, Credentials, Mechanism,
        sasl::{self, Exchange, SaslError, Step},
        throttle::{AfterFailure, Refused, Reservation},
    },
    config::AuthMode,
    hooks::Decision,
    log_limit::{self, Event},
    plugin_host::view,
    smtp::{
        Reply,
        capabilities::{Capabilities, Extension},
        line::NextLine,
    },
    telemetry,
    upstream::Step as UpstreamStep,
};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// The mechanisms to announce in EHLO now, if AUTH is offered at all.
    pub(super) fn auth_offer(&self, upstream: &Capabilities) -> Option<Vec<String>> {
        let policy = &self.listener.config.auth;
        let offered = match policy.mode {
            AuthMode::Off => return None,
            AuthMode::Edge => true,
            AuthMode::Passthrough => upstream.has(Extension::Auth),
        };
        if !offered || (self.peer.tls.is_none() && !policy.allow_plaintext) {
            return None;
        }
        let mechanisms: Vec<String> = policy
            .mechanisms
            .iter()
            .filter(|m| {
                policy.mode == AuthMode::Edge
                    || upstream.auth_mechanisms.iter().any(|u| u == m.name())
            })
            .map(|m| m.name().to_string())
            .collect();
        (!mechanisms.is_empty()).then_some(mechanisms)
    }

    pub(super) async fn auth(&mut self, argument: String) -> Flow {
        if let Some(refused) = self.auth_refused().await {
            return refused;
        }
        let (name, initial) = match argument.split_once(' ') {
            Some((name, initial)) => (name, Some(initial.trim().to_string())),
            None => (argument.as_str(), None),
        };
        let Some(mechanism) = Mechanism::from_name(name) else {
            return self.error(replies::unknown_mechanism());
        };
        // Known but not permitted here (the listener's `mechanisms`): too weak for
        // this listener's policy. In passthrough the upstream may refuse it too.
        let policy = &self.listener.config.auth;
        if !policy.mechanisms.contains(&mechanism) {
            return self.reply(replies::mechanism_too_weak());
        }
        match policy.mode {
            AuthMode::Edge => self.auth_edge(mechanism, initial).await,
            AuthMode::Passthrough => self.auth_passthrough(mechanism, initial).await,
            AuthMode::Off => self.error(replies::not_offered("AUTH")),
        }
    }

    /// The checks before any exchange: offered, sequence, TLS, throttling. `Some`
    /// when AUTH may not start (the reply is queued).
    async fn auth_refused(&mut self) -> Option<Flow> {
        let policy = &self.listener.config.auth;
        let refusal = if policy.mode == AuthMode::Off {
            replies::not_offered("AUTH")
        } else if !self.peer.esmtp {
            replies::bad_sequence("send EHLO first")
        } else if self.peer.login.is_some() {
            replies::bad_sequence("already authenticated")
        } else if self.transaction.in_transaction() {
            replies::bad_sequence("AUTH is not permitted during a mail transaction")
        } else if self.peer.tls.is_none() && !policy.allow_plaintext {
            return Some(self.reply(replies::encryption_required()));
        } else if self
            .context
            .throttle
            .is_blocked(self.peer.address.ip())
            .await
        {
            return Some(self.throttle_refused(Refused::Blocked));
        } else {
            return None;
        };
        Some(self.error(refusal))
    }

    /// An attempt the throttle will not let be checked: 421 and close when the
    /// address has used up its failures, 454 when it cannot be counted.
    fn throttle_refused(&mut self, refused: Refused) -> Flow {
        match refused {
            Refused::Blocked => {
                telemetry::auth("throttled");
                if let Some(suppressed) = log_limit::admit(Event::AuthThrottled) {
                    info!(
                        suppressed,
                        "AUTH refused: too many failures from this address"
                    );
                }
                let hostname = &self.context.config.server.hostname;
                self.reply(replies::auth_throttled(hostname));
                Flow::Close
            }
            Refused::CannotCount => {
                if let Some(suppressed) = log_limit::admit(Event::ThrottleFull) {
                    warn!(
                        suppressed,
                        "AUTH refused for now: the throttle's store is full of live counts (auth_throttle.max_clients)"
                    );
                }
                self.reply(replies::auth_unavailable())
            }
            // Logged by the throttle, which knows why.
            Refused::StoreDown => self.reply(replies::auth_unavailable()),
        }
    }

    /// Edge mode: run the exchange, check the credentials here.
    async fn auth_edge(&mut self, mechanism: Mechanism, initial: Option<String>) -> Flow {
        let credentials = match self.sasl_exchange(mechanism, initial).await {
            Ok(credentials) => credentials,
            Err(flow) => return flow,
        };
        let reservation = match self.context.throttle.reserve(self.peer.address.ip()).await {
            Ok(reservation) => reservation,
            Err(refused) => return self.throttle_refused(refused),
        };
        match self.check_credentials(&credentials, reservation).await {
            Verified::Valid => {
                let login = credentials.login.clone();
                self.logged_in(mechanism, login, true, replies::authenticated())
                    .await
            }
            Verified::Invalid(after) => {
                info!(login = %credentials.login, %mechanism, "AUTH failed: invalid credentials");
                self.auth_failed(replies::bad_credentials(), after).await
            }
            Verified::Unavailable => {
                warn!(login = %credentials.login, "AUTH: the verifier is unavailable");
                self.reply(replies::auth_unavailable())
            }
        }
    }

    /// Challenges and responses until the mechanism has the credentials.
    async fn sasl_exchange(
        &mut self,
        mechanism: Mechanism,
        initial: Option<String>,
    ) -> Result<Credentials, Flow> {
        let started = Exchange::start(mechanism, initial.as_deref());
        let (mut exchange, mut step) = started.map_err(|error| self.sasl_error(error))?;
        loop {
            match step {
                Step::Done(credentials) => return Ok(credentials),
                Step::Challenge(text) => {
                    self.reply(Reply::plain(334, text));
                    let line = self.auth_response().await?;
                    step = exchange
                        .respond(&line)
                        .map_err(|error| self.sasl_error(error))?;
                }
            }
        }
    }

    /// One response line of an exchange.
    async fn auth_response(&mut self) -> Result<String, Flow> {
        match self.next_line_within(sasl::RESPONSE_LINE_LIMIT).await {
            Ok(NextLine::Line(line)) => match String::from_utf8(line) {
                Ok(line) => Ok(line),
                Err(_) => Err(self.error(replies::auth_malformed("not ASCII"))),
            },
            Ok(NextLine::BareLf(_)) => Err(self.error(replies::bare_lf_command())),
            Ok(NextLine::TooLong) => Err(self.error(replies::auth_line_too_long())),
            Err(reply) => {
                if let Some(reply) = reply {
                    self.reply(reply);
                }
                Err(Flow::Close)
            }
        }
    }

    fn sasl_error(&mut self, error: SaslError) -> Flow {
        match error {
            SaslError::Cancelled => self.reply(replies::auth_cancelled()),
            other => self.error(replies::auth_malformed(other)),
        }
    }

    /// Asks the credentials file (on a checking thread: hashes are slow on purpose)
    /// or the verifier plugin, once this client's turn has come, and settles the
    /// throttle's reservation with the answer. A file check finishes and counts even
    /// if the client leaves meanwhile.
    async fn check_credentials(
        &mut self,
        credentials: &Credentials,
        reservation: Reservation,
    ) -> Verified {
        let checks = self.context.checks.clone();
        let turn = match checks.turn(self.peer.address.ip()).await {
            Ok(turn) => turn,
            Err(busy) => {
                warn!(%busy, "AUTH: no turn to check the credentials");
                return Verified::Unavailable;
            }
        };
        if let Some(file) = &self.listener.credentials {
            let (file, credentials, id) = (file.clone(), credentials.clone(), self.id.clone());
            let checked = checks.run(turn, move |scratch| {
                let check = file.check(&credentials.login, credentials.password.expose(), scratch);
                debug!(session = %id, ?check, "password checked");
                Verified::settle(check, reservation)
            });
            return checked.await.unwrap_or(Verified::Unavailable);
        }
        if let Some(verifier) = self.listener.verifier.clone() {
            let session = self.plugin_session();
            let result = verifier
                .verify_login(
                    &self.id,
                    &session,
                    credentials.mechanism.name(),
                    &credentials.login,
                    credentials.password.expose(),
                )
                .await;
            // A verifier that fails (trap, timeout) is unavailable: 454, never a login.
            let check = match result {
                Ok(view::LoginCheck::Valid) => Check::Valid,
                Ok(view::LoginCheck::Invalid) => Check::Invalid,
                Ok(view::LoginCheck::Unavailable) => Check::Unavailable,
                Err(error) => {
                    warn!(plugin = %verifier.name, session = %self.id, %error, "verifier plugin failed");
                    Check::Unavailable
                }
            };
            drop(turn);
            return Verified::settle(check, reservation);
        }
        Verified::Unavailable
    }

    /// A failed attempt, already counted: a growing delay before `reply`, or 421
    /// and close past the limit.
    async fn auth_failed(&mut self, reply: Reply, after: AfterFailure) -> Flow {
        telemetry::auth("failure");
        match after {
            AfterFailure::Delay(delay) => {
                tokio::select! {
                    _ = self.context.shutdown.abort.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                self.reply(reply)
            }
            AfterFailure::Disconnect => {
                info!("too many failed AUTH attempts; closing");
                self.reply(reply);
                self.reply(replies::auth_throttled(
                    &self.context.config.server.hostname,
                ));
                Flow::Close
            }
        }
    }

    /// A login the verifier accepted: the AUTH hook decides last; `success` is the
    /// 235 the client gets otherwise (the upstream's own, in passthrough).
    async fn logged_in(
        &mut self,
        mechanism: Mechanism,
        login: String,
        verified_here: bool,
        success: Reply,
    ) -> Flow {
        if !self.hooks.is_empty() {
            let session = self.plugin_session();
            let decision = self.hooks.auth(&session, mechanism.name(), &login).await;
            if let Decision::Refuse(_) | Decision::Disconnect(_) = decision {
                info!(%login, "AUTH refused by a plugin");
                // The upstream took the login (passthrough): that session is the
                // client's no longer.
                if self.link.is_authenticated() {
                    self.link.quit().await;
                }
                return self.refused(decision).unwrap_or(Flow::Continue);
            }
        }
        info!(%login, %mechanism, "authenticated");
        telemetry::auth("success");
        self.peer.login = Some(Login {
            name: login,
            verified_here,
        });
        // An upstream session opened before (VRFY) was not told the login.
        if verified_here {
            self.link.quit().await;
        }
        self.reply(success)
    }

    /// Passthrough mode: the upstream runs the exchange; responses are relayed to it
    /// line by line, and its final reply to the client.
    async fn auth_passthrough(&mut self, mechanism: Mechanism, initial: Option<String>) -> Flow {
        let mut login = initial
            .as_deref()
            .and_then(|i| sasl::login_of(mechanism, i));
        let mut line = match &initial {
            Some(initial) if !is_sasl_token(initial) => {
                return self.error(replies::auth_malformed("not base64"));
            }
            Some(initial) => format!("AUTH {mechanism} {initial}"),
            None => format!("AUTH {mechanism}"),
        };
        let timeout = self.context.upstream.config.timeouts.command;
        // Counted as a failure until the upstream says 235.
        let mut reservation = match self.context.throttle.reserve(self.peer.address.ip()).await {
            Ok(reservation) => Some(reservation),
            Err(refused) => return self.throttle_refused(refused),
        };
        loop {
            let reply = match self.upstream_session().await {
                Ok(upstream) => {
                    upstream
                        .command(UpstreamStep::Command, &line, timeout)
                        .await
                }
                Err(error) => Err(error),
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err(error) => {
                    let _ = self.link.fail(error);
                    return self.reply(replies::auth_unavailable());
                }
            };
            match reply.code() {
                334 => {}
                235 => {
                    if let Some(reservation) = reservation.take() {
                        reservation.succeeded();
                    }
                    self.link.authenticated();
                    let login = login.unwrap_or_default();
                    return self.logged_in(mechanism, login, false, reply).await;
                }
                421 => return self.relay(reply),
                535 => {
                    let after = reservation.take().expect("settled once").failed();
                    return self.auth_failed(reply, after).await;
                }
                _ => return self.reply(reply),
            }
            self.reply(reply);
            let response = match self.auth_response().await {
                Ok(response) => response,
                Err(flow) => {
                    self.cancel_upstream_auth().await;
                    return flow;
                }
            };
            if !is_sasl_token(&response) {
                self.cancel_upstream_auth().await;
                return self.error(replies::auth_malformed("not base64"));
            }
            if login.is_none() {
                login = sasl::login_of(mechanism, &response);
            }
            line = response;
        }
    }

    /// Ends an exchange the upstream is in the middle of.
    async fn cancel_upstream_auth(&mut self) {
        let timeout = self.context.upstream.config.timeouts.command;
        if let Some(upstream) = self.link.session()
            && upstream
                .command(UpstreamStep::Command, "*", timeout)
                .await
                .is_err()
        {
            self.link.drop_session();
        }
    }

    /// The login for the sender-login check and AUTH= of MAIL.
    pub(super) fn login_name(&self) -> Option<&str> {
        self.peer.login.as_ref().map(|login| login.name.as_str())
    }

    /// The sender-login map, if the listener has one.
    pub(super) fn sender_allowed(&self, sender: &str) -> bool {
        self.listener
            .sender_logins
            .as_ref()
            .is_none_or(|map| map.allows(self.login_name(), sender))
    }
}

/// What checking credentials came to, with the throttle's answer to a failure.
#[derive(Debug)]
enum Verified {
    Valid,
    Invalid(AfterFailure),
    /// No answer (verifier failed, no turn in time): the attempt is not counted.
    Unavailable,
}

impl Verified {
    fn settle(check: Check, reservation: Reservation) -> Self {
        match check {
            Check::Valid => {
                reservation.succeeded();
                Verified::Valid
            }
            Check::Invalid => Verified::Invalid(reservation.failed()),
            Check::Unavailable => Verified::Unavailable,
        }
    }
}

/// A response that may be relayed: base64, `=` or `*`, nothing that could end a line.
fn is_sasl_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'*'))
}

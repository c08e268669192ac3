//! MAIL and RCPT: local checks (sequence, parameters against the offered extensions,
//! limits), then the relay to the upstream. When the upstream offers PIPELINING, a MAIL
//! and the RCPTs the client pipelined behind it go upstream in one write and their
//! replies come back in order.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use portcullis_syntax::{
    Violation,
    param::{self, Verb},
};

use super::{Envelope, Flow, Session, Transaction, replies};
use crate::{config::AuthMode, hooks::Decision};
use crate::{
    smtp::{
        MailCommand, Param, RcptCommand, Reply,
        capabilities::{Capabilities, Extension},
        command::{self, CommandError},
    },
    upstream::{Step, UpstreamError},
};

/// A RCPT taken from the pipeline: either ready to relay, or already answered locally.
enum PendingRcpt {
    Relay(RcptCommand),
    Local {
        reply: Reply,
        /// A client error that counts towards `max_errors` (syntax, unknown parameter).
        counts_as_error: bool,
    },
}

impl PendingRcpt {
    fn client_error(reply: Reply) -> Self {
        PendingRcpt::Local {
            reply,
            counts_as_error: true,
        }
    }

    fn refused(reply: Reply) -> Self {
        PendingRcpt::Local {
            reply,
            counts_as_error: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn mail(&mut self, mail: MailCommand) -> Flow {
        if self.peer.helo.is_none() {
            return self.error(replies::bad_sequence("send HELO or EHLO first"));
        }
        if self.transaction.in_transaction() {
            return self.error(replies::bad_sequence("nested MAIL command"));
        }
        // Until the upstream accepts it.
        self.transaction = Transaction::MailRefused { excused: 0 };
        if self.listener.config.require_tls && self.peer.tls.is_none() {
            return self.reply(replies::tls_required());
        }
        if self.listener.config.auth.required && self.peer.login.is_none() {
            return self.reply(replies::auth_required());
        }
        if let Err(problem) = check_mail(&mail, &self.offered) {
            return if problem.is_junk() {
                self.error(problem.reply())
            } else {
                self.reply(problem.reply())
            };
        }
        if !self.sender_allowed(mail.reverse_path.mailbox()) {
            info!(sender = %mail.reverse_path.mailbox(), login = ?self.login_name(), "sender not allowed for this login");
            return self.reply(replies::sender_not_owned(self.login_name()));
        }
        let edge = self.listener.config.auth.mode == AuthMode::Edge;
        let authenticated = self.peer.login.is_some();
        self.audit_mail(mail.reverse_path.mailbox());
        let mut mail = match self.mail_hook(mail).await {
            Ok(mail) => mail,
            Err(flow) => return flow,
        };
        let upstream = match self.upstream_session().await {
            Ok(upstream) => upstream,
            Err(error) => {
                let reply = self.link.fail(error);
                return self.reply(reply);
            }
        };
        if edge {
            edge_auth_param(
                &mut mail.params,
                authenticated,
                upstream.capabilities().has(Extension::Auth),
            );
        }
        if let Some(keyword) = missing_extension(
            &mail.params,
            upstream.capabilities(),
            Extension::for_mail_param,
        ) {
            return self.reply(replies::extension_gone(&keyword));
        }
        let pipelined = if upstream.capabilities().has(Extension::Pipelining) {
            let smtputf8 = mail.params.iter().any(|param| param.is("SMTPUTF8"));
            self.take_pipelined_rcpts(smtputf8)
        } else {
            Vec::new()
        };
        self.relay_envelope(Some(mail), pipelined).await
    }

    pub(super) async fn rcpt(&mut self, rcpt: RcptCommand) -> Flow {
        let smtputf8 = match &self.transaction {
            Transaction::UpstreamLost => return self.reply(replies::upstream_lost()),
            Transaction::Open(envelope) => envelope.smtputf8(),
            Transaction::Idle | Transaction::MailRefused { .. } => {
                return self.out_of_sequence("need MAIL before RCPT");
            }
        };
        let pending = self.check_rcpt(Ok(rcpt), 0, smtputf8);
        self.relay_envelope(None, vec![pending]).await
    }

    /// Takes the RCPT commands the client pipelined behind MAIL out of the input
    /// buffer, checking each locally (`smtputf8`: that MAIL carries SMTPUTF8).
    fn take_pipelined_rcpts(&mut self, smtputf8: bool) -> Vec<PendingRcpt> {
        let limit = self.context.config.smtp.command_line_limit;
        let mut taken = Vec::new();
        while taken.len() < self.context.config.smtp.max_recipients {
            let Some(line) = self.downstream.input.peek_line(limit) else {
                break;
            };
            let is_rcpt = line.len() >= 4
                && line[..4].eq_ignore_ascii_case(b"RCPT")
                && line.get(4).is_none_or(|&b| b == b' ');
            if !is_rcpt {
                break;
            }
            let parsed = match command::parse(line) {
                Ok(crate::smtp::Command::Rcpt(rcpt)) => Ok(rcpt),
                Ok(_) => Err(CommandError::Unrecognized),
                Err(error) => Err(error),
            };
            self.downstream.input.skip_peeked_line();
            let relayed_before = taken
                .iter()
                .filter(|p| matches!(p, PendingRcpt::Relay(_)))
                .count();
            taken.push(self.check_rcpt(parsed, relayed_before, smtputf8));
        }
        taken
    }

    /// Local checks for one RCPT; `pending` counts RCPTs of this batch relayed before
    /// it, `smtputf8` whether the transaction's MAIL carries SMTPUTF8.
    fn check_rcpt(
        &self,
        parsed: Result<RcptCommand, CommandError>,
        pending: usize,
        smtputf8: bool,
    ) -> PendingRcpt {
        let rcpt = match parsed {
            Ok(rcpt) => rcpt,
            Err(CommandError::Syntax(detail)) => {
                return PendingRcpt::client_error(replies::syntax(detail));
            }
            Err(_) => return PendingRcpt::client_error(replies::unrecognized()),
        };
        if let Some(keyword) =
            missing_extension(&rcpt.params, &self.offered, Extension::for_rcpt_param)
        {
            return PendingRcpt::client_error(replies::unsupported_parameter(&keyword));
        }
        if let Err(violation) = param::check_params(Verb::Rcpt, rcpt.params.iter().map(Param::pair))
        {
            return PendingRcpt::client_error(replies::syntax(violation));
        }
        if let Some(upstream) = self.link.capabilities()
            && let Some(keyword) =
                missing_extension(&rcpt.params, upstream, Extension::for_rcpt_param)
        {
            return PendingRcpt::refused(replies::extension_gone(&keyword));
        }
        if rcpt.forward_path.is_utf8() && !smtputf8 {
            return PendingRcpt::refused(replies::utf8_needs_smtputf8());
        }
        let accepted = self
            .transaction
            .envelope()
            .map_or(0, |e| e.recipients.len());
        if accepted + pending >= self.context.config.smtp.max_recipients {
            return PendingRcpt::refused(replies::too_many_recipients());
        }
        PendingRcpt::Relay(rcpt)
    }

    /// Sends MAIL (if given) and the relayable RCPTs upstream in one write, then
    /// answers every command in the order the client sent them.
    async fn relay_envelope(&mut self, mail: Option<MailCommand>, rcpts: Vec<PendingRcpt>) -> Flow {
        for pending in &rcpts {
            if let PendingRcpt::Relay(rcpt) = pending {
                self.audit_rcpt(rcpt.forward_path.mailbox());
            }
        }
        let (rcpts, after) = self.rcpt_hooks(mail.as_ref(), rcpts).await;
        let mut lines: Vec<String> = mail.iter().map(MailCommand::to_string).collect();
        lines.extend(rcpts.iter().filter_map(|pending| match pending {
            PendingRcpt::Relay(rcpt) => Some(rcpt.to_string()),
            PendingRcpt::Local { .. } => None,
        }));
        let timeout = self.context.upstream.config.timeouts.command;
        let result = match (lines.is_empty(), self.link.session()) {
            (true, _) => Ok(Vec::new()),
            (false, Some(upstream)) => upstream.envelope(&lines, timeout).await,
            (false, None) => Err(UpstreamError::Closed(Step::Command)),
        };
        let mut upstream_replies = match result {
            Ok(replies) => replies.into_iter(),
            Err(error) => return self.envelope_failed(error, mail.is_some(), rcpts),
        };
        if !lines.is_empty() {
            self.link.transaction_started();
        }
        if let Some(mail) = mail {
            let reply = upstream_replies.next().expect("one reply per line");
            debug!(from = %mail.reverse_path, reply = %reply, "MAIL");
            if reply.is_positive() {
                self.transaction = Transaction::Open(Envelope::new(mail));
            }
            if self.relay(reply) == Flow::Close {
                return Flow::Close;
            }
        }
        for pending in rcpts {
            match pending {
                PendingRcpt::Local {
                    reply,
                    counts_as_error: true,
                } => {
                    if self.error(reply) == Flow::Close {
                        return Flow::Close;
                    }
                }
                PendingRcpt::Local {
                    reply,
                    counts_as_error: false,
                } => {
                    self.reply(reply);
                }
                PendingRcpt::Relay(rcpt) => {
                    let reply = upstream_replies.next().expect("one reply per line");
                    debug!(to = %rcpt.forward_path, reply = %reply, "RCPT");
                    if reply.is_positive()
                        && let Transaction::Open(envelope) = &mut self.transaction
                    {
                        envelope.recipients.push(rcpt);
                    }
                    if self.relay(reply) == Flow::Close {
                        return Flow::Close;
                    }
                }
            }
        }
        after
    }

    /// The plugins' MAIL stage: `Err` with the flow when they refused. A rewrite is
    /// checked by the rules the client's own command followed (in `hooks`).
    async fn mail_hook(&mut self, mail: MailCommand) -> Result<MailCommand, Flow> {
        if self.hooks.is_empty() {
            return Ok(mail);
        }
        let info = self.plugin_session();
        let (decision, mail) = self.hooks.mail(&info, mail, &self.offered).await;
        if let Some(flow) = self.refused(decision) {
            return Err(flow);
        }
        Ok(mail)
    }

    /// The plugins' RCPT stage for each recipient about to be relayed. A refusal
    /// becomes that recipient's local reply; a disconnect answers it (and the rest of
    /// the batch) with 421, and the flow says the session ends after this batch.
    async fn rcpt_hooks(
        &mut self,
        mail: Option<&MailCommand>,
        rcpts: Vec<PendingRcpt>,
    ) -> (Vec<PendingRcpt>, Flow) {
        let mut after = Flow::Continue;
        if self.hooks.is_empty() {
            return (rcpts, after);
        }
        let info = self.plugin_session();
        let mut envelope = self.plugin_envelope(mail);
        let mut checked = Vec::with_capacity(rcpts.len());
        for pending in rcpts {
            let PendingRcpt::Relay(rcpt) = pending else {
                checked.push(pending);
                continue;
            };
            if after == Flow::Close {
                checked.push(PendingRcpt::refused(replies::plugin_disconnect(None)));
                continue;
            }
            let (decision, rcpt) = self.hooks.rcpt(&info, &envelope, rcpt, &self.offered).await;
            checked.push(match decision {
                Decision::Continue | Decision::Accept | Decision::Discard => {
                    envelope
                        .recipients
                        .push(rcpt.forward_path.mailbox().to_string());
                    PendingRcpt::Relay(rcpt)
                }
                Decision::Refuse(reply) => PendingRcpt::refused(reply),
                Decision::Disconnect(reply) => {
                    after = Flow::Close;
                    PendingRcpt::refused(reply)
                }
            });
        }
        (checked, after)
    }

    /// The upstream failed during MAIL/RCPT: every relayed command in the batch gets
    /// the failure reply. If MAIL had been accepted earlier, later RCPT and DATA get 451
    /// too, until the client resets.
    fn envelope_failed(
        &mut self,
        error: UpstreamError,
        had_mail: bool,
        rcpts: Vec<PendingRcpt>,
    ) -> Flow {
        let reply = self.link.fail(error);
        let lost_mid_transaction = !had_mail && self.transaction.envelope().is_some();
        self.transaction = if had_mail {
            Transaction::MailRefused { excused: 0 }
        } else if lost_mid_transaction {
            Transaction::UpstreamLost
        } else {
            Transaction::Idle
        };
        if had_mail {
            self.reply(reply.clone());
        }
        for pending in rcpts {
            match pending {
                PendingRcpt::Local { reply: local, .. } => self.reply(local),
                PendingRcpt::Relay(_) => self.reply(reply.clone()),
            };
        }
        Flow::Continue
    }
}

/// RFC 4954 §5 for edge AUTH, where the proxy is the server that verified the
/// client: an authenticated client's AUTH= goes on as given; a client that did not
/// authenticate is treated as if it had sent AUTH=<>; an upstream without AUTH gets
/// no AUTH= at all (it learns the login through XCLIENT LOGIN instead).
fn edge_auth_param(params: &mut Vec<Param>, authenticated: bool, upstream_offers_auth: bool) {
    let Some(index) = params.iter().position(|param| param.is("AUTH")) else {
        return;
    };
    if !upstream_offers_auth {
        params.remove(index);
    } else if !authenticated {
        params[index].value = Some("<>".into());
    }
}

/// Why a MAIL command cannot go on as the client sent it.
#[derive(Debug)]
enum MailProblem {
    /// A parameter of an extension that was not offered.
    Unoffered(String),
    /// A parameter its extension does not allow.
    Syntax(Violation),
    /// SIZE says more than the upstream takes.
    TooBig,
    /// A UTF-8 reverse-path without SMTPUTF8.
    NeedsSmtputf8,
}

impl MailProblem {
    fn reply(&self) -> Reply {
        match self {
            MailProblem::Unoffered(keyword) => replies::unsupported_parameter(keyword),
            MailProblem::Syntax(violation) => replies::syntax(violation),
            MailProblem::TooBig => replies::message_too_big(),
            MailProblem::NeedsSmtputf8 => replies::utf8_needs_smtputf8(),
        }
    }

    /// A client that only sends commands like this one is not speaking SMTP to us:
    /// it counts toward `smtp.max_junk_commands`.
    fn is_junk(&self) -> bool {
        matches!(self, MailProblem::Unoffered(_) | MailProblem::Syntax(_))
    }
}

/// Checks MAIL against what was offered and what its parameters' extensions define.
fn check_mail(mail: &MailCommand, offered: &Capabilities) -> Result<(), MailProblem> {
    if let Some(keyword) = missing_extension(&mail.params, offered, Extension::for_mail_param) {
        return Err(MailProblem::Unoffered(keyword));
    }
    param::check_params(Verb::Mail, mail.params.iter().map(Param::pair))
        .map_err(MailProblem::Syntax)?;
    if let Some(size) = mail.params.iter().find(|p| p.is("SIZE"))
        && let Some(limit) = offered.size_limit
        && size
            .value
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|size| size > limit)
    {
        return Err(MailProblem::TooBig);
    }
    let smtputf8 = mail.params.iter().any(|p| p.is("SMTPUTF8"));
    if mail.reverse_path.is_utf8() && !smtputf8 {
        return Err(MailProblem::NeedsSmtputf8);
    }
    Ok(())
}

/// The first parameter whose extension is not in `capabilities`.
fn missing_extension(
    params: &[Param],
    capabilities: &Capabilities,
    extension_of: fn(&str) -> Option<Extension>,
) -> Option<String> {
    params
        .iter()
        .find(|param| {
            !extension_of(&param.keyword).is_some_and(|extension| capabilities.has(extension))
        })
        .map(|param| param.keyword.clone())
}

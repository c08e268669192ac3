//! HELO and EHLO: the HELO hook, then a reply offering what the proxy can relay end to
//! end — the upstream's extensions (from its open session, the cache, or a probe
//! waited for briefly) intersected with the proxy's, plus STARTTLS and AUTH where the
//! listener offers them.

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::warn;

use super::{Flow, Session};
use crate::{
    config::{AuthMode, OpenAt, TlsMode},
    connection::LARGE_READ,
    smtp::{
        Reply,
        capabilities::{Capabilities, Extension},
    },
};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// HELO/EHLO: resets any transaction and answers with what can be relayed.
    pub(super) async fn helo(&mut self, name: String, esmtp: bool) -> Flow {
        self.reset_transaction().await;
        let hostname = self.context.config.server.hostname.clone();
        self.peer.helo = Some(name.clone());
        self.peer.esmtp = esmtp;
        self.peer.helo_rewrite = None;
        if !self.hooks.is_empty() {
            let info = self.plugin_session();
            let (decision, rewrite) = self.hooks.helo(&info, &name).await;
            if let Some(flow) = self.refused(decision) {
                self.peer.helo = None;
                return flow;
            }
            self.peer.helo_rewrite = rewrite;
        }
        if !esmtp {
            self.offered = Capabilities::default();
            self.open_upstream_early();
            return self.reply(Reply::plain(250, format!("{hostname} Hello {name}")));
        }
        let upstream = self.upstream_capabilities().await;
        self.offered = upstream.offer(self.context.config.smtp.max_message_size);
        if let Some(mechanisms) = self.auth_offer(&upstream) {
            self.offered.insert(Extension::Auth);
            self.offered.auth_mechanisms = mechanisms;
        }
        let mut lines = vec![format!("{hostname} Hello {name}")];
        lines.extend(self.offered.ehlo_lines());
        if self.listener.config.tls == TlsMode::Starttls && self.peer.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        self.open_upstream_early();
        self.reply(Reply::multiline(250, lines))
    }

    /// With `upstream.open = "ehlo"` (or `"connect"` where that did not start one):
    /// starts opening the upstream session now, so its connect, greeting, EHLO,
    /// STARTTLS and XCLIENT overlap the client's next round trips instead of adding
    /// to MAIL's. Not while a STARTTLS the client was offered or an AUTH the proxy
    /// checks itself may follow: either ends the upstream session (it was told of a
    /// client that is no longer the one talking), so the opening would be wasted.
    fn open_upstream_early(&mut self) {
        let config = &self.context.upstream.config;
        if config.open == OpenAt::Mail {
            return;
        }
        // One begun at connect goes on with the greeting just accepted.
        self.link.greeted(&self.peer);
        if !self.link.is_closed() {
            return;
        }
        let tls_may_follow =
            self.listener.config.tls == TlsMode::Starttls && self.peer.tls.is_none();
        let edge_login_may_follow = self.listener.config.auth.mode == AuthMode::Edge
            && self.peer.login.is_none()
            && self.offered.has(Extension::Auth);
        if tls_may_follow || edge_login_may_follow {
            return;
        }
        let lookup = self.name_lookup.take();
        self.link
            .start_opening(self.context.clone(), self.peer.clone(), lookup);
    }

    /// With `upstream.open = "connect"`: starts opening the upstream session as the
    /// client is let in, its connect and the upstream's greeting overlapping the
    /// client's greeting and EHLO. Not where the client may start TLS or log in at
    /// the proxy after EHLO (the upstream session would start over; it opens after
    /// EHLO as `"ehlo"` says instead), nor where idle upstream sessions are kept
    /// (taking one costs no set-up to hide).
    pub(super) fn open_upstream_at_connect(&mut self) {
        let config = &self.context.upstream.config;
        let listener = &self.listener.config;
        let may_restart = (listener.tls == TlsMode::Starttls && self.peer.tls.is_none())
            || listener.auth.mode == AuthMode::Edge;
        if config.open != OpenAt::Connect
            || may_restart
            || !config.reuse.idle_timeout.is_zero()
            || !self.link.is_closed()
        {
            return;
        }
        let lookup = self.name_lookup.take();
        self.link
            .start_opening_at_connect(self.context.clone(), self.peer.clone(), lookup);
    }

    /// The upstream's extensions: from the open session, the cache, or a probe waited
    /// for at most `upstream.capabilities_wait` (and not at all once the client left).
    async fn upstream_capabilities(&mut self) -> Capabilities {
        if let Some(upstream) = self.link.session() {
            return upstream.capabilities().clone();
        }
        let context = self.context.clone();
        if let Some(capabilities) = context.capabilities.get() {
            return capabilities;
        }
        let config = &context.config;
        let probe = context.capabilities.wait_for(
            &context.upstream,
            &config.server.hostname,
            context.upstream.config.capabilities_wait,
        );
        // Reading on meanwhile only buffers what the client pipelined; it ends the
        // wait when the client has gone.
        let deadline = Instant::now() + config.smtp.command_timeout;
        let downstream = &mut self.downstream;
        let client_gone = async { while downstream.fill(LARGE_READ, deadline).await.is_ok() {} };
        let known = tokio::select! {
            known = probe => known,
            () = client_gone => None,
        };
        known.unwrap_or_else(|| {
            warn!("the upstream's extensions are not known yet; offering none");
            Capabilities::default()
        })
    }
}

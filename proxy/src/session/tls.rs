//! TLS toward the client: the handshake of implicit TLS (before the greeting) and
//! STARTTLS (RFC 3207). After STARTTLS the session forgets everything the client
//! said in plaintext: bytes it pipelined behind the command are thrown away unread
//! (the CVE-2011-0411 class of injection), the client must EHLO again, and an upstream
//! session opened before is closed, since it was told the old HELO name.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::{Flow, Session, replies};
use crate::{config::TlsMode, smtp::capabilities::Capabilities, telemetry, tls::MaybeTls};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn starttls(&mut self) -> Flow {
        if self.listener.config.tls != TlsMode::Starttls {
            return self.error(replies::not_offered("STARTTLS"));
        }
        if self.peer.tls.is_some() {
            return self.error(replies::bad_sequence("TLS is already active"));
        }
        self.reply(replies::ready_for_tls());
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        let pipelined = self.downstream.input.pending().len();
        if pipelined > 0 {
            warn!(
                bytes = pipelined,
                "discarding plaintext the client sent after STARTTLS"
            );
            self.downstream.input.clear();
        }
        if !self.handshake().await {
            return Flow::Close;
        }
        self.reset_transaction().await;
        self.peer.helo = None;
        self.peer.esmtp = false;
        self.peer.helo_rewrite = None;
        self.peer.login = None;
        self.offered = Capabilities::default();
        self.link.quit().await;
        Flow::Continue
    }

    /// Runs the server handshake on the plaintext stream. False if it failed (the
    /// session then ends: nothing sensible can be said on a broken TLS stream).
    pub(super) async fn handshake(&mut self) -> bool {
        let Some(tls) = self.context.server_tls.clone() else {
            warn!("TLS requested but no certificate is loaded");
            return false;
        };
        let Some(stream) = self.downstream.stream_mut().take_plain() else {
            return false;
        };
        let timeout = self.context.config.tls.handshake_timeout;
        match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => {
                *self.downstream.stream_mut() =
                    MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(stream)));
                let info = self.downstream.stream().info();
                if let Some(info) = &info {
                    info!(version = %info.version, cipher = %info.cipher, sni = ?info.server_name, "TLS established");
                    self.hooks.tls_started(&info.version, &info.cipher);
                }
                telemetry::tls_handshake(Some(
                    info.as_ref().map_or("other", |i| i.version.as_str()),
                ));
                self.peer.tls = info;
                true
            }
            Ok(Err(error)) => {
                info!(%error, "TLS handshake failed");
                telemetry::tls_handshake(None);
                false
            }
            Err(_) => {
                info!("TLS handshake timed out");
                telemetry::tls_handshake(None);
                false
            }
        }
    }
}

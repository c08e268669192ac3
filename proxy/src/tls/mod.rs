//! TLS on both legs of the relay, with rustls: `server` holds the certificates
//! offered to clients (chosen by SNI, read again by each reload), `client` verifies the
//! upstream's. [`MaybeTls`] is the stream both sides read and write, so a session can
//! switch to TLS after STARTTLS without changing type.

pub(crate) mod client;
pub(crate) mod server;

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls::crypto::CryptoProvider;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why certificates or keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM section.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key}: this key does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The name the upstream's certificate must carry is not a valid DNS name or IP.
    #[error("{0:?} is not a valid server name for TLS")]
    ServerName(String),
    /// The system's certificate store has no usable root certificate.
    #[error("no root certificates found in the system store; set upstream.tls_ca")]
    NoSystemRoots,
    /// No certificate is configured.
    #[error("no certificate is configured ([[tls.certificate]])")]
    NoCertificate,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

pub(crate) fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The process's crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A stream that is plaintext until a TLS handshake replaces it.
#[derive(Debug)]
pub enum MaybeTls<S> {
    /// Plaintext.
    Plain(S),
    /// Encrypted (as server toward a client, or as client toward the upstream).
    Tls(Box<tokio_rustls::TlsStream<S>>),
    /// Left behind while a handshake owns the stream; every I/O on it fails.
    Upgrading,
}

/// What a finished handshake negotiated, for logs and plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// The cipher suite's IANA name.
    pub cipher: String,
    /// The server name the client asked for (SNI), if any.
    pub server_name: Option<String>,
}

impl<S> MaybeTls<S> {
    /// True once the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// The transport underneath (the TCP socket), if the stream is not being upgraded.
    pub fn transport(&self) -> Option<&S> {
        match self {
            MaybeTls::Plain(stream) => Some(stream),
            MaybeTls::Tls(tls) => Some(tls.get_ref().0),
            MaybeTls::Upgrading => None,
        }
    }

    /// Takes the plaintext stream out for a handshake. `None` if it is not plaintext.
    pub fn take_plain(&mut self) -> Option<S> {
        match std::mem::replace(self, MaybeTls::Upgrading) {
            MaybeTls::Plain(stream) => Some(stream),
            other => {
                *self = other;
                None
            }
        }
    }

    /// What the handshake negotiated, once encrypted.
    pub fn info(&self) -> Option<TlsInfo> {
        let MaybeTls::Tls(tls) = self else {
            return None;
        };
        let (version, cipher, server_name) = match tls.as_ref() {
            tokio_rustls::TlsStream::Server(stream) => {
                let connection = stream.get_ref().1;
                (
                    connection.protocol_version(),
                    connection.negotiated_cipher_suite(),
                    connection.server_name().map(str::to_string),
                )
            }
            tokio_rustls::TlsStream::Client(stream) => {
                let connection = stream.get_ref().1;
                (
                    connection.protocol_version(),
                    connection.negotiated_cipher_suite(),
                    None,
                )
            }
        };
        Some(TlsInfo {
            version: version
                .and_then(|v| v.as_str())
                .unwrap_or("TLS")
                .replace("TLSv1_", "TLSv1."),
            cipher: cipher
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown")
                .to_string(),
            server_name,
        })
    }
}

fn upgrading() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream is being upgraded to TLS",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_flush(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            MaybeTls::Upgrading => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
            MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(stream) => stream.is_write_vectored(),
            MaybeTls::Tls(stream) => stream.is_write_vectored(),
            MaybeTls::Upgrading => false,
        }
    }
}

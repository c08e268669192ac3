//! The control socket (`server.control_socket`): how `portcullis reload` asks the
//! running proxy to reload and hears whether it did. A Unix socket, mode 0600, so only
//! the proxy's own user (and root) can use it. One request per connection, one line
//! each way:
//!
//! ```text
//! → reload
//! ← ok: <what changed>         or    ← failed: <why, naming the key and line>
//! ```
//!
//! SIGHUP does the same reload without the answer (`systemctl reload` sends it).

use std::{
    future::Future,
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long either side waits for the other's line. A reload compiles changed
/// plugins, which can take seconds each.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest request line read.
const MAX_REQUEST: u64 = 64;

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket cannot be bound or reached.
    #[error("control socket {path}: {source}")]
    Socket {
        /// `server.control_socket`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The proxy did not answer in time, or answered something else.
    #[error("control socket {path}: {reason}")]
    Answer {
        /// `server.control_socket`.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The proxy's answer to `reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadAnswer {
    /// The new configuration is in use; what changed.
    Done(String),
    /// Nothing changed; why.
    Refused(String),
}

impl ReloadAnswer {
    fn render(&self) -> String {
        let (word, text) = match self {
            ReloadAnswer::Done(text) => ("ok", text),
            ReloadAnswer::Refused(text) => ("failed", text),
        };
        // One line: a reason spanning lines would end the answer early.
        format!("{word}: {}\n", text.replace(['\r', '\n'], " "))
    }

    fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(text) = line.strip_prefix("ok: ") {
            Some(ReloadAnswer::Done(text.into()))
        } else {
            line.strip_prefix("failed: ")
                .map(|text| ReloadAnswer::Refused(text.into()))
        }
    }
}

/// Binds the control socket at `path`, replacing a stale one (a socket file nobody
/// listens on, left by a process that was killed), and refusing to take over one a
/// running proxy answers on.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let error = |source| ControlError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if UnixStream::connect(path).await.is_ok() {
        return Err(error(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process answers on it",
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let listener = UnixListener::bind(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    Ok(listener)
}

/// Answers requests on `listener` until `stop`, one at a time: `reload` runs
/// `reload` and sends its answer back.
pub(crate) async fn serve<F, R>(listener: UnixListener, stop: CancellationToken, reload: R)
where
    R: Fn() -> F,
    F: Future<Output = ReloadAnswer>,
{
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let read = tokio::time::timeout(
            REQUEST_TIMEOUT,
            BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST)).read_line(&mut line),
        )
        .await;
        let reply = match read {
            Ok(Ok(_)) if line.trim_end() == "reload" => reload().await.render(),
            Ok(Ok(_)) => "unknown request: the control socket understands \"reload\"\n".into(),
            _ => continue,
        };
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(reply.as_bytes())).await;
    }
}

/// Asks the proxy listening on `path` to reload, and waits for its answer.
pub async fn ask_reload(path: &Path) -> Result<ReloadAnswer, ControlError> {
    let socket_error = |source| ControlError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let answer_error = |reason: &str| ControlError::Answer {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let mut stream = UnixStream::connect(path).await.map_err(socket_error)?;
    stream.write_all(b"reload\n").await.map_err(socket_error)?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    match tokio::time::timeout(REPLY_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err(answer_error("no answer within 5 minutes")),
        Ok(Err(source)) => Err(socket_error(source)),
        Ok(Ok(_)) => ReloadAnswer::parse(&line)
            .ok_or_else(|| answer_error(&format!("unexpected answer {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_one_line_each_way() {
        let done = ReloadAnswer::Done("1 listener added".into());
        assert_eq!(done.render(), "ok: 1 listener added\n");
        assert_eq!(ReloadAnswer::parse(&done.render()), Some(done));
        // A reason spanning lines is folded into one.
        let refused = ReloadAnswer::Refused("line 3: a\nb".into());
        assert_eq!(refused.render(), "failed: line 3: a b\n");
        assert_eq!(
            ReloadAnswer::parse(&refused.render()),
            Some(ReloadAnswer::Refused("line 3: a b".into()))
        );
        assert_eq!(ReloadAnswer::parse("maybe\n"), None);
    }

    #[tokio::test]
    async fn a_reload_request_is_answered_and_a_live_socket_is_not_taken_over() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("control.sock");
        let listener = bind(&path).await.expect("binds");
        let mode = std::fs::metadata(&path)
            .expect("socket file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, stop.clone(), || async {
            ReloadAnswer::Done("nothing changed".into())
        }));
        let answer = ask_reload(&path).await.expect("an answer");
        assert_eq!(answer, ReloadAnswer::Done("nothing changed".into()));
        let Err(ControlError::Socket { source, .. }) = bind(&path).await else {
            panic!("a second proxy took over a live control socket");
        };
        assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        stop.cancel();
        server.await.expect("the server ends");
        // Left by a process that is gone: taken over.
        bind(&path).await.expect("a stale socket is replaced");
    }
}

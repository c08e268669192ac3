//! The development upstream: a tiny built-in SMTP server that accepts every message
//! and writes it to a folder as an `.eml` file. It exists so a newcomer sees mail flow
//! through the proxy at once, and for trying plugins out. It is not an MTA: it does no
//! delivery, no queueing and no checks. Never use it in production.
//!
//! It listens on an ephemeral loopback port; the proxy relays to it like to any other
//! upstream, over TCP, so the same code path runs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    connection::{Connection, LARGE_READ},
    smtp::{
        Command, EnhancedCode, Reply,
        data::{BareLineEndings, DataReader},
        line::NextLine,
    },
};

const TIMEOUT: Duration = Duration::from_secs(300);
const MAX_SIZE: u64 = 1 << 30;

/// Starts the development upstream; returns the address it listens on.
pub(crate) async fn start(
    folder: PathBuf,
    hostname: &str,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    tokio::fs::create_dir_all(&folder).await.map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("cannot create the folder {}: {error}", folder.display()),
        )
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    info!(%address, folder = %folder.display(), "development upstream started (for trying out only: it writes every message to the folder)");
    let hostname = hostname.to_string();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let folder = folder.clone();
            let hostname = hostname.clone();
            tokio::spawn(async move {
                if let Err(error) = serve(stream, &folder, &hostname).await {
                    warn!(%error, "development upstream session failed");
                }
            });
        }
    });
    Ok(address)
}

fn ok(text: &str) -> Reply {
    Reply::new(250, EnhancedCode::new(2, 0, 0), text)
}

async fn serve(stream: TcpStream, folder: &Path, hostname: &str) -> std::io::Result<()> {
    let mut connection = Connection::new(stream);
    connection.queue_reply(&Reply::plain(
        220,
        format!("{hostname} development upstream"),
    ));
    let mut sender: Option<String> = None;
    let mut recipients: Vec<String> = Vec::new();
    loop {
        if !connection.input.has_line(4096) {
            connection.flush(Instant::now() + TIMEOUT).await?;
        }
        let line = match connection.read_line(4096, Instant::now() + TIMEOUT).await {
            Ok(NextLine::Line(line)) => line,
            Ok(_) => {
                connection.queue_reply(&Reply::new(500, EnhancedCode::new(5, 5, 2), "Bad line"));
                continue;
            }
            Err(_) => return Ok(()),
        };
        let reply = match crate::smtp::command::parse(&line) {
            Ok(Command::Ehlo(_)) => Reply::multiline(
                250,
                [
                    "development upstream",
                    "PIPELINING",
                    "SIZE 1073741824",
                    "8BITMIME",
                    "SMTPUTF8",
                    "DSN",
                    "ENHANCEDSTATUSCODES",
                ]
                .map(String::from)
                .to_vec(),
            ),
            Ok(Command::Helo(_)) => Reply::plain(250, "development upstream"),
            Ok(Command::Mail(mail)) => {
                sender = Some(mail.reverse_path.raw().to_string());
                recipients.clear();
                ok("Sender ok")
            }
            Ok(Command::Rcpt(rcpt)) => {
                recipients.push(rcpt.forward_path.raw().to_string());
                ok("Recipient ok")
            }
            Ok(Command::Data) if sender.is_some() && !recipients.is_empty() => {
                connection.queue_reply(&Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
                connection.flush(Instant::now() + TIMEOUT).await?;
                let message = read_message(&mut connection).await?;
                let path = write_message(
                    folder,
                    sender.take().unwrap_or_default(),
                    &recipients,
                    &message,
                )
                .await?;
                recipients.clear();
                info!(file = %path.display(), "development upstream stored a message");
                ok(&format!(
                    "Stored as {}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ))
            }
            Ok(Command::Data) => Reply::new(503, EnhancedCode::new(5, 5, 1), "Need MAIL and RCPT"),
            Ok(Command::Rset) => {
                sender = None;
                recipients.clear();
                ok("Ok")
            }
            Ok(Command::Quit) => {
                connection.queue_reply(&Reply::new(221, EnhancedCode::new(2, 0, 0), "Bye"));
                connection.flush(Instant::now() + TIMEOUT).await?;
                return Ok(());
            }
            Ok(Command::Vrfy(_)) => {
                Reply::new(252, EnhancedCode::new(2, 5, 0), "Will attempt delivery")
            }
            Ok(_) => ok("Ok"),
            Err(_) => Reply::new(500, EnhancedCode::new(5, 5, 2), "Command unrecognized"),
        };
        connection.queue_reply(&reply);
    }
}

async fn read_message(connection: &mut Connection<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut reader = DataReader::new(BareLineEndings::Normalize, usize::MAX, MAX_SIZE);
    let mut message = Vec::new();
    loop {
        let feed = reader.feed(connection.input.pending(), &mut message);
        connection.input.consume(feed.consumed);
        if feed.finished {
            return Ok(message);
        }
        connection
            .fill(LARGE_READ, Instant::now() + TIMEOUT)
            .await
            .map_err(std::io::Error::other)?;
    }
}

/// Writes the message with its envelope as `Return-Path` and `X-Envelope-To` fields,
/// to a temporary name first so a reader never sees half a file.
async fn write_message(
    folder: &Path,
    sender: String,
    recipients: &[String],
    message: &[u8],
) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    let name = format!(
        "{stamp}-{}-{}.eml",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut file = format!(
        "Return-Path: {sender}\r\nX-Envelope-To: {}\r\n",
        recipients.join(", ")
    )
    .into_bytes();
    file.extend_from_slice(message);
    let temporary = folder.join(format!(".{name}.tmp"));
    let path = folder.join(name);
    tokio::fs::write(&temporary, &file).await?;
    tokio::fs::rename(&temporary, &path).await?;
    Ok(path)
}

//! Bytes ↔ lines over one stream: reading into a [`LineBuffer`] under a deadline,
//! queueing output and writing it in one go. Used by both sides of the relay (the
//! downstream session and the upstream client), so neither repeats the I/O details.

use std::io;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{Instant, timeout_at},
};

use crate::smtp::{
    Reply,
    line::{LineBuffer, NextLine},
};

/// How many bytes to make room for before each read. Small while idle (10,000 idle
/// sessions must stay cheap), large while a message streams.
pub(crate) const SMALL_READ: usize = 4 * 1024;
/// Room made before each read during DATA.
pub(crate) const LARGE_READ: usize = 64 * 1024;

/// Why reading from the peer stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The deadline passed first.
    #[error("timed out")]
    Timeout,
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// A stream with an input line buffer and an output queue.
#[derive(Debug)]
pub(crate) struct Connection<S> {
    stream: S,
    /// Bytes read and not consumed yet.
    pub input: LineBuffer,
    output: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a connected stream.
    pub(crate) fn new(stream: S) -> Self {
        Self {
            stream,
            input: LineBuffer::default(),
            output: Vec::new(),
        }
    }

    /// Reads once into the input buffer, waiting at most until `deadline`.
    pub(crate) async fn fill(
        &mut self,
        room: usize,
        deadline: Instant,
    ) -> Result<usize, ReadError> {
        let target = self.input.read_target(room);
        match timeout_at(deadline, self.stream.read_buf(target)).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(count)) => Ok(count),
            Ok(Err(error)) => Err(error.into()),
        }
    }

    /// The next line, reading as needed; the whole line must arrive before `deadline`.
    pub(crate) async fn read_line(
        &mut self,
        limit: usize,
        deadline: Instant,
    ) -> Result<NextLine, ReadError> {
        loop {
            if let Some(line) = self.input.next_line(limit) {
                return Ok(line);
            }
            self.fill(SMALL_READ, deadline).await?;
        }
    }

    /// Queues a reply; it is sent by the next [`Connection::flush`].
    pub(crate) fn queue_reply(&mut self, reply: &Reply) {
        reply.render_into(&mut self.output);
    }

    /// Queues raw bytes.
    pub(crate) fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Writes everything queued, waiting at most until `deadline`.
    pub(crate) async fn flush(&mut self, deadline: Instant) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = timeout_at(deadline, self.stream.write_all(&self.output)).await;
        self.output.clear();
        if self.output.capacity() > LARGE_READ * 2 {
            self.output.shrink_to(SMALL_READ);
        }
        match result {
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
            Ok(result) => result,
        }
    }

    /// Writes `bytes` directly, bypassing the queue (for message data already framed).
    pub(crate) async fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        match timeout_at(deadline, self.stream.write_all(bytes)).await {
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
            Ok(result) => result,
        }
    }

    /// Shuts the write side down (best effort).
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// The underlying stream.
    pub(crate) fn stream(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, to replace it (STARTTLS).
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

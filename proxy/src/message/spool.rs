//! Spooling a message while it arrives: the header block in memory, the body in memory
//! up to a configured size and in an unnamed temporary file past it (the file has no
//! name on disk, so nothing is left behind even if the proxy is killed).

use std::{
    borrow::Cow,
    io::{Seek, SeekFrom, Write},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::Arc,
};

use super::header::{self, HeaderField};

/// The header block is searched for its end up to this size; past it, whatever was
/// parsed as fields stays header and the rest is body.
const MAX_HEADER_BLOCK: usize = 1024 * 1024;

/// Where a spooled body lives. Cheap to clone: plugins share it, nobody copies it.
#[derive(Debug, Clone)]
pub enum Body {
    /// Held in memory.
    Memory(Arc<Vec<u8>>),
    /// In an unnamed temporary file of `len` octets.
    File {
        /// The file, read with positioned reads.
        file: Arc<std::fs::File>,
        /// Its length.
        len: u64,
    },
    /// Parts one after the other: a spooled body with text a plugin put before or
    /// after it, so a footer on a large message copies nothing.
    Joined(Arc<Vec<Body>>),
}

impl Body {
    /// `parts` one after the other (joined bodies are flattened).
    pub fn joined(parts: impl IntoIterator<Item = Body>) -> Self {
        let mut flat = Vec::new();
        for part in parts {
            match part {
                Body::Joined(inner) => flat.extend(inner.iter().cloned()),
                part if part.is_empty() => {}
                part => flat.push(part),
            }
        }
        Body::Joined(Arc::new(flat))
    }

    /// The body's size in octets.
    pub fn len(&self) -> u64 {
        match self {
            Body::Memory(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
            Body::Joined(parts) => parts.iter().map(Body::len).sum(),
        }
    }

    /// True if the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `length` octets from `offset` (fewer only at the end, none past it).
    pub async fn read_at(&self, offset: u64, length: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < length {
            let chunk = self
                .chunk_at(offset + out.len() as u64, length - out.len())
                .await?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Up to `length` octets from `offset`, lent rather than copied where the body is
    /// in memory; a joined body gives at most the rest of one part. Empty only at the
    /// end.
    pub async fn chunk_at(&self, offset: u64, length: usize) -> std::io::Result<Cow<'_, [u8]>> {
        if let Body::Joined(parts) = self {
            let mut start = offset;
            for part in parts.iter() {
                if start < part.len() {
                    return Box::pin(part.chunk_at(start, length)).await;
                }
                start -= part.len();
            }
            return Ok(Cow::Borrowed(&[]));
        }
        let length = usize::try_from(self.len().saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(length);
        if length == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        match self {
            Body::Memory(bytes) => {
                let start = offset as usize;
                Ok(Cow::Borrowed(&bytes[start..start + length]))
            }
            Body::File { file, .. } => {
                let file = file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut buffer = vec![0; length];
                    file.read_exact_at(&mut buffer, offset).map(|()| buffer)
                });
                Ok(Cow::Owned(read.await.map_err(std::io::Error::other)??))
            }
            Body::Joined(_) => unreachable!("handled above"),
        }
    }
}

/// A whole spooled message.
#[derive(Debug, Clone)]
pub struct Spooled {
    /// Header fields in order.
    pub headers: Vec<HeaderField>,
    /// Whether an empty line separated the header block from the body.
    pub separator: bool,
    /// The body.
    pub body: Body,
}

/// Collects message content (already un-stuffed) as it arrives.
#[derive(Debug)]
pub struct SpoolWriter {
    head: Vec<u8>,
    headers: Option<(Vec<HeaderField>, bool)>,
    memory: Vec<u8>,
    file: Option<(std::fs::File, u64)>,
    memory_limit: usize,
    directory: Option<PathBuf>,
}

impl SpoolWriter {
    /// A writer that keeps up to `memory_limit` body octets in memory, then spills to a
    /// temporary file in `directory` (the system's temporary folder if `None`).
    pub fn new(memory_limit: usize, directory: Option<PathBuf>) -> Self {
        Self {
            head: Vec::new(),
            headers: None,
            memory: Vec::new(),
            file: None,
            memory_limit,
            directory,
        }
    }

    /// Appends message content.
    pub async fn write(&mut self, content: &[u8]) -> std::io::Result<()> {
        if self.headers.is_some() {
            return self.write_body(content).await;
        }
        let search_from = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(content);
        let ended = self.head.starts_with(b"\r\n")
            || memchr::memmem::find(&self.head[search_from..], b"\r\n\r\n").is_some()
            || self.head.len() > MAX_HEADER_BLOCK;
        if ended {
            self.end_header_block().await?;
        }
        Ok(())
    }

    /// The finished message.
    pub async fn finish(mut self) -> std::io::Result<Spooled> {
        if self.headers.is_none() {
            self.end_header_block().await?;
        }
        let (headers, separator) = self.headers.take().unwrap_or_default();
        let body = match self.file.take() {
            None => Body::Memory(Arc::new(std::mem::take(&mut self.memory))),
            Some((mut file, len)) => {
                file = tokio::task::spawn_blocking(move || file.flush().map(|()| file))
                    .await
                    .map_err(std::io::Error::other)??;
                Body::File {
                    file: Arc::new(file),
                    len,
                }
            }
        };
        Ok(Spooled {
            headers,
            separator,
            body,
        })
    }

    async fn end_header_block(&mut self) -> std::io::Result<()> {
        let head = std::mem::take(&mut self.head);
        let (fields, used, separator) = header::parse_block(&head);
        self.headers = Some((fields, separator));
        self.write_body(&head[used..]).await
    }

    async fn write_body(&mut self, content: &[u8]) -> std::io::Result<()> {
        if content.is_empty() {
            return Ok(());
        }
        if self.file.is_none() && self.memory.len() + content.len() <= self.memory_limit {
            self.memory.extend_from_slice(content);
            return Ok(());
        }
        let (mut file, mut len) = match self.file.take() {
            Some(open) => open,
            None => (self.create_file()?, 0),
        };
        let mut pending = std::mem::take(&mut self.memory);
        pending.extend_from_slice(content);
        let written = pending.len() as u64;
        file = tokio::task::spawn_blocking(move || {
            file.seek(SeekFrom::End(0))?;
            file.write_all(&pending).map(|()| file)
        })
        .await
        .map_err(std::io::Error::other)??;
        len += written;
        self.file = Some((file, len));
        Ok(())
    }

    fn create_file(&self) -> std::io::Result<std::fs::File> {
        match &self.directory {
            Some(directory) => tempfile::tempfile_in(directory),
            None => tempfile::tempfile(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn spool(chunks: &[&[u8]], memory_limit: usize) -> Spooled {
        let mut writer = SpoolWriter::new(memory_limit, None);
        for chunk in chunks {
            writer.write(chunk).await.unwrap();
        }
        writer.finish().await.unwrap()
    }

    async fn whole_body(body: &Body) -> Vec<u8> {
        body.read_at(0, usize::MAX).await.unwrap()
    }

    #[tokio::test]
    async fn headers_split_across_chunks_are_found() {
        let spooled = spool(&[b"Subject: a\r", b"\n\r", b"\nbody\r\n"], 1024).await;
        assert_eq!(spooled.headers.len(), 1);
        assert!(spooled.separator);
        assert_eq!(whole_body(&spooled.body).await, b"body\r\n");
    }

    #[tokio::test]
    async fn large_bodies_go_to_a_file_and_read_back_exactly() {
        let line = b"0123456789abcdef0123456789abcdef\r\n";
        let mut chunks: Vec<&[u8]> = vec![b"From: a@b.c\r\n\r\n"];
        chunks.extend(std::iter::repeat_n(&line[..], 1000));
        let spooled = spool(&chunks, 4096).await;
        assert!(matches!(spooled.body, Body::File { .. }));
        assert_eq!(spooled.body.len(), 34_000);
        assert_eq!(whole_body(&spooled.body).await, line.repeat(1000));
        assert_eq!(spooled.body.read_at(33_990, 100).await.unwrap().len(), 10);
        assert!(spooled.body.read_at(40_000, 100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_message_without_header_is_all_body() {
        let spooled = spool(&[b"just text\r\n"], 1024).await;
        assert!(spooled.headers.is_empty());
        assert!(!spooled.separator);
        assert_eq!(whole_body(&spooled.body).await, b"just text\r\n");
    }
}

//! The PROXY protocol header a load balancer sends before its client's first byte
//! (HAProxy's proxy-protocol.txt, versions 1 and 2), read with no I/O: the caller
//! reads exactly as many bytes as [`parse`] asks for, so nothing after the header —
//! the client's SMTP or its TLS handshake — is taken from the stream.
//!
//! Strict on purpose: the header decides which address every limit, plugin and log
//! sees, so anything but a well-formed header of a stream over IPv4 or IPv6 (or one
//! that names no client: v1 `UNKNOWN`, v2 `LOCAL` or `UNSPEC`) ends the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 octets that open a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 line, CRLF included (the specification's own bound).
const V1_MAX: usize = 107;

/// The longest version 2 header taken: the 16 fixed octets, the addresses and up to
/// a kilobyte of TLVs (HAProxy's own stay far below; the rest are skipped unread).
pub(crate) const V2_MAX: usize = 16 + 1024;

/// Which version a header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// The text line.
    V1,
    /// The binary block.
    V2,
}

/// A complete header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its version.
    pub version: Version,
    /// The client's address and the address it connected to, if the header names
    /// them; `None` (v1 `UNKNOWN`, v2 `LOCAL` or `UNSPEC`) means the connection's own
    /// addresses stand, as the specification asks.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// How far the bytes read so far got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Read exactly this many more octets, then ask again.
    Need(usize),
    /// The header, which was all of the bytes given.
    Done(Header),
}

/// Why a connection that had to start with a header does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeaderError {
    /// Neither version's signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that breaks the specification.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// Longer than a header may be here.
    #[error("PROXY protocol header too long")]
    TooLong,
}

/// Looks at the bytes read so far (start with none).
pub(crate) fn parse(bytes: &[u8]) -> Result<Progress, HeaderError> {
    if bytes.len() < V2_SIGNATURE.len() {
        let v1 = b"PROXY ".starts_with(&bytes[..bytes.len().min(6)]);
        let v2 = V2_SIGNATURE.starts_with(bytes);
        return if v1 || v2 {
            Ok(Progress::Need(V2_SIGNATURE.len() - bytes.len()))
        } else {
            Err(HeaderError::Missing)
        };
    }
    if bytes.starts_with(V2_SIGNATURE) {
        parse_v2(bytes)
    } else if bytes.starts_with(b"PROXY ") {
        parse_v1(bytes)
    } else {
        Err(HeaderError::Missing)
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Progress, HeaderError> {
    let Some(end) = bytes.windows(2).position(|pair| pair == b"\r\n") else {
        if bytes.len() >= V1_MAX || bytes.contains(&b'\n') {
            return Err(if bytes.contains(&b'\n') {
                HeaderError::Malformed("a line ending other than CRLF")
            } else {
                HeaderError::TooLong
            });
        }
        return Ok(Progress::Need(1));
    };
    if end + 2 != bytes.len() {
        return Err(HeaderError::Malformed("bytes after the line"));
    }
    let line =
        std::str::from_utf8(&bytes[..end]).map_err(|_| HeaderError::Malformed("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let addresses = match fields.as_slice() {
        // UNKNOWN may be followed by anything; the connection's addresses stand.
        ["PROXY", "UNKNOWN", ..] => None,
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            source,
            destination,
            source_port,
            destination_port,
        ] => {
            let ip = |text: &str| -> Result<IpAddr, HeaderError> {
                let ip = if *family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| HeaderError::Malformed("an address of the wrong family or form"))
            };
            Some((
                SocketAddr::new(ip(source)?, port(source_port)?),
                SocketAddr::new(ip(destination)?, port(destination_port)?),
            ))
        }
        ["PROXY", "TCP4" | "TCP6", ..] => {
            return Err(HeaderError::Malformed(
                "expected two addresses and two ports",
            ));
        }
        _ => return Err(HeaderError::Malformed("unknown protocol family")),
    };
    Ok(Progress::Done(Header {
        version: Version::V1,
        addresses,
    }))
}

/// A port as v1 writes it: 0 to 65535 in decimal, no sign, no leading zero.
fn port(text: &str) -> Result<u16, HeaderError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical
        .then(|| text.parse().ok())
        .flatten()
        .ok_or(HeaderError::Malformed(
            "a port that is not a number from 0 to 65535",
        ))
}

fn parse_v2(bytes: &[u8]) -> Result<Progress, HeaderError> {
    if bytes.len() < 16 {
        return Ok(Progress::Need(16 - bytes.len()));
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return Err(HeaderError::Malformed(
            "version 2 signature with another version",
        ));
    }
    let length = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if length > V2_MAX {
        return Err(HeaderError::TooLong);
    }
    if bytes.len() < length {
        return Ok(Progress::Need(length - bytes.len()));
    }
    if bytes.len() > length {
        return Err(HeaderError::Malformed("bytes after the header"));
    }
    let payload = &bytes[16..];
    let addresses = match (command, bytes[13]) {
        // LOCAL: the balancer's own connection (a health check): its addresses stand.
        (0x0, _) => None,
        (0x1, 0x00) => None,
        (0x1, 0x11) => Some(endpoints::<4>(payload).ok_or(HeaderError::Malformed(
            "TCP over IPv4 needs 12 octets of addresses",
        ))?),
        (0x1, 0x21) => Some(endpoints::<16>(payload).ok_or(HeaderError::Malformed(
            "TCP over IPv6 needs 36 octets of addresses",
        ))?),
        (0x1, _) => return Err(HeaderError::Malformed("not a TCP stream over IPv4 or IPv6")),
        _ => return Err(HeaderError::Malformed("unknown command")),
    };
    Ok(Progress::Done(Header {
        version: Version::V2,
        addresses,
    }))
}

/// A v2 address block of one family (`N`-octet addresses): source address,
/// destination address, source port, destination port; `None` if it is too short.
fn endpoints<const N: usize>(block: &[u8]) -> Option<(SocketAddr, SocketAddr)>
where
    IpAddr: From<[u8; N]>,
{
    let block = block.get(..2 * N + 4)?;
    let ip = |at: usize| IpAddr::from(<[u8; N]>::try_from(&block[at..at + N]).expect("N octets"));
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    Some((
        SocketAddr::new(ip(0), port(2 * N)),
        SocketAddr::new(ip(N), port(2 * N + 2)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` as a reader following [`parse`] would: the outcome, and how many
    /// octets were read.
    fn read(input: &[u8]) -> (Result<Header, HeaderError>, usize) {
        let mut read = 0;
        loop {
            match parse(&input[..read]) {
                Ok(Progress::Need(more)) => {
                    assert!(more > 0);
                    if read + more > input.len() {
                        return (Err(HeaderError::Malformed("(input ended)")), read);
                    }
                    read += more;
                }
                Ok(Progress::Done(header)) => return (Ok(header), read),
                Err(error) => return (Err(error), read),
            }
        }
    }

    type Addresses = Option<(SocketAddr, SocketAddr)>;

    fn addresses(source: &str, destination: &str) -> Addresses {
        Some((source.parse().unwrap(), destination.parse().unwrap()))
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        header.extend_from_slice(payload);
        header
    }

    #[test]
    fn version_1_lines() {
        let cases: &[(&[u8], Addresses)] = &[
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n",
                addresses("192.0.2.7:40000", "198.51.100.1:25"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 587\r\n",
                addresses("[2001:db8::7]:40000", "[2001:db8::1]:587"),
            ),
            (b"PROXY UNKNOWN\r\n", None),
            (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", None),
        ];
        for (input, expected) in cases {
            let mut wire = input.to_vec();
            wire.extend_from_slice(b"EHLO after.the.header\r\n");
            let (header, read) = read(&wire);
            let header = header.unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(header.version, Version::V1);
            assert_eq!(&header.addresses, expected, "{input:?}");
            assert_eq!(read, input.len(), "the SMTP after the header stays unread");
        }
    }

    #[test]
    fn version_1_mistakes_end_the_connection() {
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(100));
        let cases: &[(&[u8], HeaderError)] = &[
            (b"EHLO client.example\r\n", HeaderError::Missing),
            (
                b"proxy TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
                HeaderError::Missing,
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",
                HeaderError::Malformed("a line ending other than CRLF"),
            ),
            (
                b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
                HeaderError::Malformed("an address of the wrong family or form"),
            ),
            (
                b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
                HeaderError::Malformed("an address of the wrong family or form"),
            ),
            (
                b"PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",
                HeaderError::Malformed("an address of the wrong family or form"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
                HeaderError::Malformed("a port that is not a number from 0 to 65535"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 25\r\n",
                HeaderError::Malformed("a port that is not a number from 0 to 65535"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n",
                HeaderError::Malformed("a port that is not a number from 0 to 65535"),
            ),
            (
                b"PROXY TCP4 192.0.2.7  198.51.100.1 1 25\r\n",
                HeaderError::Malformed("expected two addresses and two ports"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
                HeaderError::Malformed("expected two addresses and two ports"),
            ),
            (
                b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
                HeaderError::Malformed("unknown protocol family"),
            ),
            (long.as_bytes(), HeaderError::TooLong),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &read(input).0.unwrap_err(),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn version_2_blocks() {
        let mut v4 = vec![192, 0, 2, 7, 198, 51, 100, 1];
        v4.extend_from_slice(&40000u16.to_be_bytes());
        v4.extend_from_slice(&25u16.to_be_bytes());
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&40000u16.to_be_bytes());
        v6.extend_from_slice(&465u16.to_be_bytes());
        let mut with_tlvs = v4.clone();
        with_tlvs.extend_from_slice(&[0x04, 0x00, 0x03, b'x', b'y', b'z']);
        let cases = [
            (
                v2(1, 0x11, &v4),
                addresses("192.0.2.7:40000", "198.51.100.1:25"),
            ),
            (
                v2(1, 0x21, &v6),
                addresses("[2001:db8::7]:40000", "[2001:db8::1]:465"),
            ),
            (
                v2(1, 0x11, &with_tlvs),
                addresses("192.0.2.7:40000", "198.51.100.1:25"),
            ),
            (v2(0, 0x00, &[]), None),
            (v2(0, 0x11, &v4), None),
            (v2(1, 0x00, &[]), None),
        ];
        for (input, expected) in cases {
            let mut wire = input.clone();
            wire.extend_from_slice(b"\x16\x03\x01 a TLS ClientHello follows");
            let (header, read) = read(&wire);
            let header = header.unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(header.version, Version::V2);
            assert_eq!(header.addresses, expected, "{input:?}");
            assert_eq!(read, input.len(), "the bytes after the header stay unread");
        }
    }

    #[test]
    fn version_2_mistakes_end_the_connection() {
        let v4 = [192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 25];
        let mut wrong_version = v2(1, 0x11, &v4);
        wrong_version[12] = 0x11;
        let mut too_long = V2_SIGNATURE.to_vec();
        too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let cases = [
            (
                wrong_version,
                HeaderError::Malformed("version 2 signature with another version"),
            ),
            (v2(2, 0x11, &v4), HeaderError::Malformed("unknown command")),
            (
                v2(1, 0x12, &v4),
                HeaderError::Malformed("not a TCP stream over IPv4 or IPv6"),
            ),
            (
                v2(1, 0x31, &[0; 216]),
                HeaderError::Malformed("not a TCP stream over IPv4 or IPv6"),
            ),
            (
                v2(1, 0x11, &v4[..8]),
                HeaderError::Malformed("TCP over IPv4 needs 12 octets of addresses"),
            ),
            (
                v2(1, 0x21, &v4),
                HeaderError::Malformed("TCP over IPv6 needs 36 octets of addresses"),
            ),
            (too_long, HeaderError::TooLong),
            (b"\r\n\r\n\0\r\nQUIT!".to_vec(), HeaderError::Missing),
        ];
        for (input, expected) in cases {
            assert_eq!(read(&input).0.unwrap_err(), expected, "{input:?}");
        }
    }

    #[test]
    fn asks_for_exactly_what_completes_the_header() {
        assert_eq!(parse(b""), Ok(Progress::Need(12)));
        assert_eq!(parse(b"PRO"), Ok(Progress::Need(9)));
        assert_eq!(parse(&V2_SIGNATURE[..5]), Ok(Progress::Need(7)));
        assert_eq!(parse(b"EHL"), Err(HeaderError::Missing));
        assert_eq!(parse(b"PROXY TCP4 1"), Ok(Progress::Need(1)));
        let mut start = V2_SIGNATURE.to_vec();
        start.extend_from_slice(&[0x21, 0x11, 0, 12]);
        assert_eq!(parse(&start), Ok(Progress::Need(12)));
    }
}

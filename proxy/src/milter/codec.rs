//! The milter protocol on the wire (Sendmail's libmilter protocol, version 6, as
//! Postfix speaks it), as data: the packets the proxy sends, encoded, and the packets
//! a milter sends, decoded and checked. No I/O.
//!
//! Every packet is a 32-bit big-endian length, a command octet and that length less
//! one of data; strings are NUL-terminated.

use thiserror::Error;

/// The protocol version the proxy speaks.
pub(crate) const VERSION: u32 = 6;

/// The largest packet a milter may send (libmilter's largest negotiable data size is
/// 1 MiB; a body replacement comes in chunks of at most that).
pub(crate) const MAX_PACKET: usize = 1024 * 1024 + 1;

/// The size of the body chunks the proxy sends (libmilter's default data size).
pub(crate) const BODY_CHUNK: usize = 65_535;

/// What a milter may do to a message (`SMFIF_*`), as negotiated.
pub(crate) mod action {
    pub(crate) const ADD_HEADERS: u32 = 0x01;
    pub(crate) const CHANGE_BODY: u32 = 0x02;
    pub(crate) const ADD_RCPT: u32 = 0x04;
    pub(crate) const DELETE_RCPT: u32 = 0x08;
    pub(crate) const CHANGE_HEADERS: u32 = 0x10;
    pub(crate) const QUARANTINE: u32 = 0x20;
    pub(crate) const CHANGE_FROM: u32 = 0x40;
    pub(crate) const SET_SYMBOL_LIST: u32 = 0x100;
    /// Everything the proxy offers. Not `SMFIF_ADDRCPT_PAR` (a recipient added with
    /// ESMTP parameters): an added recipient gets none, as a plugin's does.
    pub(crate) const OFFERED: u32 = ADD_HEADERS
        | CHANGE_BODY
        | ADD_RCPT
        | DELETE_RCPT
        | CHANGE_HEADERS
        | QUARANTINE
        | CHANGE_FROM
        | SET_SYMBOL_LIST;
}

/// Which steps a milter does not want, or does not answer (`SMFIP_*`).
pub(crate) mod protocol {
    pub(crate) const NO_CONNECT: u32 = 0x01;
    pub(crate) const NO_HELO: u32 = 0x02;
    pub(crate) const NO_MAIL: u32 = 0x04;
    pub(crate) const NO_RCPT: u32 = 0x08;
    pub(crate) const NO_BODY: u32 = 0x10;
    pub(crate) const NO_HEADERS: u32 = 0x20;
    pub(crate) const NO_EOH: u32 = 0x40;
    pub(crate) const NO_REPLY_HEADER: u32 = 0x80;
    pub(crate) const NO_UNKNOWN: u32 = 0x100;
    pub(crate) const NO_DATA: u32 = 0x200;
    pub(crate) const SKIP: u32 = 0x400;
    pub(crate) const NO_REPLY_CONNECT: u32 = 0x1000;
    pub(crate) const NO_REPLY_HELO: u32 = 0x2000;
    pub(crate) const NO_REPLY_MAIL: u32 = 0x4000;
    pub(crate) const NO_REPLY_RCPT: u32 = 0x8000;
    pub(crate) const NO_REPLY_DATA: u32 = 0x10000;
    pub(crate) const NO_REPLY_UNKNOWN: u32 = 0x20000;
    pub(crate) const NO_REPLY_EOH: u32 = 0x40000;
    pub(crate) const NO_REPLY_BODY: u32 = 0x80000;
    pub(crate) const HEADER_LEADING_SPACE: u32 = 0x100000;
    /// Everything the proxy offers. Not `SMFIP_RCPT_REJ` (the proxy does not send
    /// recipients that were refused) nor the larger data sizes. (It never sends
    /// unknown commands, so their flags cost nothing.)
    pub(crate) const OFFERED: u32 = NO_CONNECT
        | NO_HELO
        | NO_MAIL
        | NO_RCPT
        | NO_BODY
        | NO_HEADERS
        | NO_EOH
        | NO_REPLY_HEADER
        | NO_UNKNOWN
        | NO_DATA
        | SKIP
        | NO_REPLY_CONNECT
        | NO_REPLY_HELO
        | NO_REPLY_MAIL
        | NO_REPLY_RCPT
        | NO_REPLY_DATA
        | NO_REPLY_UNKNOWN
        | NO_REPLY_EOH
        | NO_REPLY_BODY
        | HEADER_LEADING_SPACE;
}

/// The point of the session a list of macros belongs to (`SMFIM_*`), in the order of
/// their numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MacroStage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    EndOfMessage,
    EndOfHeaders,
}

impl MacroStage {
    const ALL: [MacroStage; 7] = [
        MacroStage::Connect,
        MacroStage::Helo,
        MacroStage::Mail,
        MacroStage::Rcpt,
        MacroStage::Data,
        MacroStage::EndOfMessage,
        MacroStage::EndOfHeaders,
    ];

    /// The command the macros are sent before.
    fn command(self) -> u8 {
        match self {
            MacroStage::Connect => b'C',
            MacroStage::Helo => b'H',
            MacroStage::Mail => b'M',
            MacroStage::Rcpt => b'R',
            MacroStage::Data => b'T',
            MacroStage::EndOfMessage => b'E',
            MacroStage::EndOfHeaders => b'N',
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The client's address family in a connect packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Inet,
    Inet6,
}

/// A packet the proxy sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    /// Negotiation: the version, the actions and the protocol steps offered.
    Negotiate {
        actions: u32,
        protocol: u32,
    },
    /// Macros for the command that follows.
    Macros {
        stage: MacroStage,
        pairs: &'a [(&'a str, String)],
    },
    Connect {
        hostname: &'a str,
        family: Family,
        port: u16,
        address: &'a str,
    },
    Helo(&'a str),
    /// MAIL: the path in angle brackets, then each ESMTP parameter.
    Mail(&'a [String]),
    /// RCPT, likewise.
    Rcpt(&'a [String]),
    Data,
    Header {
        name: &'a str,
        value: &'a [u8],
    },
    EndOfHeaders,
    Body(&'a [u8]),
    EndOfBody,
    Abort,
    Quit,
}

/// Why a packet cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum EncodeError {
    /// A NUL in a string would end it early: the milter would read something else.
    #[error("{0} holds a NUL octet")]
    Nul(&'static str),
    #[error("a packet of {0} octets is too large")]
    TooLarge(usize),
}

impl Packet<'_> {
    /// Appends the packet to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let written = self.encode_data(out).and_then(|()| {
            let length = out.len() - start - 4;
            u32::try_from(length).map_err(|_| EncodeError::TooLarge(length))
        });
        match written {
            Ok(length) => {
                out[start..start + 4].copy_from_slice(&length.to_be_bytes());
                Ok(())
            }
            Err(error) => {
                out.truncate(start);
                Err(error)
            }
        }
    }

    /// The command octet and the data.
    fn encode_data(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Packet::Negotiate { actions, protocol } => {
                out.push(b'O');
                for word in [VERSION, *actions, *protocol] {
                    out.extend_from_slice(&word.to_be_bytes());
                }
            }
            Packet::Macros { stage, pairs } => {
                out.push(b'D');
                out.push(stage.command());
                for (name, value) in *pairs {
                    string(out, "a macro name", name.as_bytes())?;
                    string(out, "a macro value", value.as_bytes())?;
                }
            }
            Packet::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                out.push(b'C');
                string(out, "the client's host name", hostname.as_bytes())?;
                out.push(match family {
                    Family::Inet => b'4',
                    Family::Inet6 => b'6',
                });
                out.extend_from_slice(&port.to_be_bytes());
                string(out, "the client's address", address.as_bytes())?;
            }
            Packet::Helo(name) => {
                out.push(b'H');
                string(out, "the HELO name", name.as_bytes())?;
            }
            Packet::Mail(args) | Packet::Rcpt(args) => {
                out.push(if matches!(self, Packet::Mail(_)) {
                    b'M'
                } else {
                    b'R'
                });
                for arg in *args {
                    string(out, "an envelope argument", arg.as_bytes())?;
                }
            }
            Packet::Data => out.push(b'T'),
            Packet::Header { name, value } => {
                out.push(b'L');
                string(out, "a header name", name.as_bytes())?;
                string(out, "a header value", value)?;
            }
            Packet::EndOfHeaders => out.push(b'N'),
            Packet::Body(chunk) => {
                out.push(b'B');
                out.extend_from_slice(chunk);
            }
            Packet::EndOfBody => out.push(b'E'),
            Packet::Abort => out.push(b'A'),
            Packet::Quit => out.push(b'Q'),
        }
        Ok(())
    }
}

fn string(out: &mut Vec<u8>, what: &'static str, text: &[u8]) -> Result<(), EncodeError> {
    if memchr::memchr(0, text).is_some() {
        return Err(EncodeError::Nul(what));
    }
    out.extend_from_slice(text);
    out.push(0);
    Ok(())
}

/// What the milter answered to the negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub(crate) version: u32,
    pub(crate) actions: u32,
    pub(crate) protocol: u32,
    /// The macros it wants at each stage (indexed by [`MacroStage::index`]), if it
    /// said; names as given (`{auth_type}` or `i`).
    pub(crate) macros: [Option<Vec<String>>; 7],
}

/// A packet a milter sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    Negotiated(Negotiated),
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    /// No more body chunks, please (only after one, with `SKIP` negotiated).
    Skip,
    /// Still working: wait on.
    Progress,
    /// Close the session with 421 (`SMFIR_SHUTDOWN` or `SMFIR_CONN_FAIL`).
    Shutdown,
    /// Refuse with this reply (`"550 5.7.1 text"`, lines joined by CRLF).
    ReplyCode(String),
    AddHeader {
        name: String,
        value: String,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// Change the `index`-th (1-based) field of `name`; an empty value removes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    ChangeFrom {
        address: String,
        args: Option<String>,
    },
    AddRecipient(String),
    DeleteRecipient(String),
    /// A piece of the new body (the pieces are concatenated).
    ReplaceBody(Vec<u8>),
    Quarantine(String),
}

/// Why a milter's packet cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum DecodeError {
    #[error("a packet of {0} octets (at most {MAX_PACKET})")]
    TooLarge(usize),
    #[error("an empty packet")]
    Empty,
    #[error("unknown reply {0:?}")]
    Unknown(char),
    #[error("reply {0:?} is malformed")]
    Malformed(char),
    #[error("reply {0:?} is not UTF-8")]
    NotText(char),
}

/// Reads one packet from the start of `buffer`: the response and how many octets it
/// took, or `None` if the packet is not complete yet.
pub(crate) fn decode(buffer: &[u8]) -> Result<Option<(Response, usize)>, DecodeError> {
    let Some(header) = buffer.get(..4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes(header.try_into().expect("four octets")) as usize;
    if length == 0 {
        return Err(DecodeError::Empty);
    }
    if length > MAX_PACKET {
        return Err(DecodeError::TooLarge(length));
    }
    let Some(packet) = buffer.get(4..4 + length) else {
        return Ok(None);
    };
    let (command, data) = (packet[0], &packet[1..]);
    let name = char::from(command);
    let malformed = || DecodeError::Malformed(name);
    let text =
        |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotText(name));
    let strings = |count: usize| -> Result<Vec<String>, DecodeError> {
        let fields = nul_terminated(data).ok_or_else(malformed)?;
        if fields.len() != count {
            return Err(malformed());
        }
        fields.into_iter().map(text).collect()
    };
    let empty = |response: Response| {
        if data.is_empty() {
            Ok(response)
        } else {
            Err(malformed())
        }
    };
    let response = match command {
        b'O' => Response::Negotiated(negotiated(data).ok_or_else(malformed)?),
        b'c' => empty(Response::Continue)?,
        b'a' => empty(Response::Accept)?,
        b'r' => empty(Response::Reject)?,
        b't' => empty(Response::Tempfail)?,
        b'd' => empty(Response::Discard)?,
        b's' => empty(Response::Skip)?,
        b'p' => empty(Response::Progress)?,
        b'4' | b'f' => empty(Response::Shutdown)?,
        b'y' => Response::ReplyCode(strings(1)?.remove(0)),
        b'h' => {
            let [name, value] = pair(strings(2)?);
            Response::AddHeader { name, value }
        }
        b'i' | b'm' => {
            let index = data.get(..4).ok_or_else(malformed)?;
            let index = u32::from_be_bytes(index.try_into().expect("four octets"));
            let fields = nul_terminated(&data[4..]).ok_or_else(malformed)?;
            let [name, value] = match <[&[u8]; 2]>::try_from(fields) {
                Ok([name, value]) => [text(name)?, text(value)?],
                Err(_) => return Err(malformed()),
            };
            if command == b'i' {
                Response::InsertHeader { index, name, value }
            } else {
                Response::ChangeHeader { index, name, value }
            }
        }
        b'e' => {
            let mut fields = nul_terminated(data).ok_or_else(malformed)?.into_iter();
            let address = text(fields.next().ok_or_else(malformed)?)?;
            let args = fields.next().map(text).transpose()?;
            if fields.next().is_some() {
                return Err(malformed());
            }
            Response::ChangeFrom { address, args }
        }
        b'+' => Response::AddRecipient(strings(1)?.remove(0)),
        b'-' => Response::DeleteRecipient(strings(1)?.remove(0)),
        b'b' => Response::ReplaceBody(data.to_vec()),
        b'q' => Response::Quarantine(strings(1)?.remove(0)),
        other => return Err(DecodeError::Unknown(char::from(other))),
    };
    Ok(Some((response, 4 + length)))
}

fn pair(mut fields: Vec<String>) -> [String; 2] {
    let second = fields.pop().expect("two fields");
    [fields.pop().expect("two fields"), second]
}

/// The NUL-terminated strings `data` is made of; `None` if the last is not terminated.
fn nul_terminated(data: &[u8]) -> Option<Vec<&[u8]>> {
    let body = data.strip_suffix(&[0])?;
    Some(body.split(|&b| b == 0).collect())
}

/// The negotiation answer: version, actions, protocol, then (version 6) pairs of a
/// stage number and a NUL-terminated list of macro names.
fn negotiated(data: &[u8]) -> Option<Negotiated> {
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|w| u32::from_be_bytes(w.try_into().expect("four octets")))
    };
    let (version, actions, protocol) = (word(0)?, word(4)?, word(8)?);
    let mut macros: [Option<Vec<String>>; 7] = Default::default();
    let mut at = 12;
    while at < data.len() {
        let stage = usize::try_from(word(at)?).ok()?;
        let rest = &data[at + 4..];
        let end = memchr::memchr(0, rest)?;
        let names = std::str::from_utf8(&rest[..end]).ok()?;
        let slot = macros.get_mut(MacroStage::ALL.get(stage)?.index())?;
        *slot = Some(names.split_whitespace().map(str::to_string).collect());
        at += 4 + end + 1;
    }
    Some(Negotiated {
        version,
        actions,
        protocol,
        macros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(packet: Packet<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        packet.encode(&mut out).expect("encodes");
        out
    }

    fn framed(command: u8, data: &[u8]) -> Vec<u8> {
        let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(command);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn packets_encode_as_libmilter_reads_them() {
        let mail = ["<a@example.com>".to_string(), "SIZE=10".to_string()];
        let macros = [
            ("j", "mx.example".to_string()),
            ("{daemon_name}", "in".to_string()),
        ];
        let table: Vec<(Packet<'_>, Vec<u8>)> = vec![
            (
                Packet::Negotiate {
                    actions: 0x1ff,
                    protocol: 0x1f_ffff,
                },
                framed(b'O', &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]),
            ),
            (
                Packet::Macros {
                    stage: MacroStage::Connect,
                    pairs: &macros,
                },
                framed(b'D', b"Cj\0mx.example\0{daemon_name}\0in\0"),
            ),
            (
                Packet::Connect {
                    hostname: "[192.0.2.1]",
                    family: Family::Inet,
                    port: 2525,
                    address: "192.0.2.1",
                },
                framed(b'C', b"[192.0.2.1]\x004\x09\xdd192.0.2.1\0"),
            ),
            (
                Packet::Helo("client.example"),
                framed(b'H', b"client.example\0"),
            ),
            (
                Packet::Mail(&mail),
                framed(b'M', b"<a@example.com>\0SIZE=10\0"),
            ),
            (Packet::Rcpt(&mail[..1]), framed(b'R', b"<a@example.com>\0")),
            (Packet::Data, framed(b'T', b"")),
            (
                Packet::Header {
                    name: "Subject",
                    value: b" hi\n\tthere",
                },
                framed(b'L', b"Subject\0 hi\n\tthere\0"),
            ),
            (Packet::EndOfHeaders, framed(b'N', b"")),
            (Packet::Body(b"a\0b\r\n"), framed(b'B', b"a\0b\r\n")),
            (Packet::EndOfBody, framed(b'E', b"")),
            (Packet::Abort, framed(b'A', b"")),
            (Packet::Quit, framed(b'Q', b"")),
        ];
        for (packet, wire) in table {
            assert_eq!(encoded(packet.clone()), wire, "{packet:?}");
        }
    }

    #[test]
    fn a_nul_in_a_string_is_refused_and_nothing_is_written() {
        let mut out = b"kept".to_vec();
        let refused = Packet::Helo("a\0b").encode(&mut out);
        assert_eq!(refused, Err(EncodeError::Nul("the HELO name")));
        assert_eq!(out, b"kept");
        let header = Packet::Header {
            name: "X",
            value: b"a\0",
        };
        assert!(header.encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn responses_decode() {
        let table: Vec<(Vec<u8>, Response)> = vec![
            (framed(b'c', b""), Response::Continue),
            (framed(b'a', b""), Response::Accept),
            (framed(b'r', b""), Response::Reject),
            (framed(b't', b""), Response::Tempfail),
            (framed(b'd', b""), Response::Discard),
            (framed(b's', b""), Response::Skip),
            (framed(b'p', b""), Response::Progress),
            (framed(b'4', b""), Response::Shutdown),
            (framed(b'f', b""), Response::Shutdown),
            (
                framed(b'y', b"554 5.7.1 Gtube pattern\0"),
                Response::ReplyCode("554 5.7.1 Gtube pattern".into()),
            ),
            (
                framed(b'h', b"X-Spam\0yes\0"),
                Response::AddHeader {
                    name: "X-Spam".into(),
                    value: "yes".into(),
                },
            ),
            (
                framed(b'i', b"\0\0\0\x01DKIM-Signature\0v=1\0"),
                Response::InsertHeader {
                    index: 1,
                    name: "DKIM-Signature".into(),
                    value: "v=1".into(),
                },
            ),
            (
                framed(b'm', b"\0\0\0\x02Subject\0\0"),
                Response::ChangeHeader {
                    index: 2,
                    name: "Subject".into(),
                    value: String::new(),
                },
            ),
            (
                framed(b'e', b"<b@example.com>\0"),
                Response::ChangeFrom {
                    address: "<b@example.com>".into(),
                    args: None,
                },
            ),
            (
                framed(b'e', b"<b@example.com>\0SIZE=5\0"),
                Response::ChangeFrom {
                    address: "<b@example.com>".into(),
                    args: Some("SIZE=5".into()),
                },
            ),
            (
                framed(b'+', b"<c@example.com>\0"),
                Response::AddRecipient("<c@example.com>".into()),
            ),
            (
                framed(b'-', b"<c@example.com>\0"),
                Response::DeleteRecipient("<c@example.com>".into()),
            ),
            (
                framed(b'b', b"new\r\nbody\r\n"),
                Response::ReplaceBody(b"new\r\nbody\r\n".to_vec()),
            ),
            (
                framed(b'q', b"looks bad\0"),
                Response::Quarantine("looks bad".into()),
            ),
        ];
        for (wire, response) in table {
            assert_eq!(
                decode(&wire),
                Ok(Some((response, wire.len()))),
                "{:?}",
                String::from_utf8_lossy(&wire)
            );
        }
    }

    #[test]
    fn negotiation_with_macro_lists() {
        let mut data = vec![0, 0, 0, 6, 0, 0, 0, 0x11, 0, 0, 0x10, 0];
        data.extend_from_slice(&[0, 0, 0, 2]);
        data.extend_from_slice(b"{mail_addr} i\0");
        data.extend_from_slice(&[0, 0, 0, 0]);
        data.extend_from_slice(b"j\0");
        let (response, _) = decode(&framed(b'O', &data)).unwrap().unwrap();
        let Response::Negotiated(negotiated) = response else {
            panic!("{response:?}")
        };
        assert_eq!((negotiated.version, negotiated.actions), (6, 0x11));
        assert_eq!(negotiated.protocol, 0x1000);
        assert_eq!(negotiated.macros[0], Some(vec!["j".to_string()]));
        assert_eq!(
            negotiated.macros[MacroStage::Mail.index()],
            Some(vec!["{mail_addr}".to_string(), "i".to_string()])
        );
        assert_eq!(negotiated.macros[MacroStage::Rcpt.index()], None);
    }

    #[test]
    fn incomplete_packets_wait_and_bad_ones_are_errors() {
        let whole = framed(b'y', b"550 5.7.1 no\0");
        for cut in 0..whole.len() {
            assert_eq!(decode(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = whole.clone();
        two.extend_from_slice(&framed(b'c', b""));
        assert_eq!(decode(&two).unwrap().unwrap().1, whole.len());

        let bad: Vec<(Vec<u8>, DecodeError)> = vec![
            (vec![0, 0, 0, 0], DecodeError::Empty),
            (
                (MAX_PACKET as u32 + 1).to_be_bytes().to_vec(),
                DecodeError::TooLarge(MAX_PACKET + 1),
            ),
            (framed(b'Z', b""), DecodeError::Unknown('Z')),
            (framed(b'c', b"x"), DecodeError::Malformed('c')),
            (
                framed(b'y', b"550 no terminator"),
                DecodeError::Malformed('y'),
            ),
            (framed(b'h', b"only-a-name\0"), DecodeError::Malformed('h')),
            (framed(b'h', b"a\0b\0c\0"), DecodeError::Malformed('h')),
            (framed(b'i', b"\0\0"), DecodeError::Malformed('i')),
            (framed(b'e', b""), DecodeError::Malformed('e')),
            (framed(b'q', b"\xff\0"), DecodeError::NotText('q')),
            (framed(b'O', &[0, 0, 0, 6]), DecodeError::Malformed('O')),
            (
                framed(
                    b'O',
                    &[0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, b'j', 0],
                ),
                DecodeError::Malformed('O'),
            ),
        ];
        for (wire, error) in bad {
            assert_eq!(decode(&wire), Err(error), "{wire:?}");
        }
    }
}

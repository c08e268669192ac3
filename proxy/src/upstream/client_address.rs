//! Telling the upstream who the real client is: Postfix's XCLIENT command
//! (XCLIENT_README) or a HAProxy PROXY protocol header, version 1 (text) or 2 (binary).

use std::net::{IpAddr, SocketAddr};

use portcullis_syntax::param::encode_xtext;

use crate::{client::Peer, dns::HostName, smtp::capabilities::Capabilities};

/// The longest XCLIENT command line, CRLF excluded (XCLIENT_README: the 512-octet
/// limit of SMTP command lines, RFC 5321 §4.5.3.1.4).
const XCLIENT_LINE_LIMIT: usize = 510;

/// The longest attribute value Postfix takes in XCLIENT: a longer one gets "501 5.5.4
/// Error: attribute value too long", which would fail every session of that client.
const XCLIENT_VALUE_LIMIT: usize = 255;

/// The XCLIENT commands for this client, with only the attributes the upstream
/// announced: one command, or more if one would pass the 512-octet line limit, with
/// NAME, ADDR and PORT in the last (XCLIENT_README, note 1: once those change, the
/// proxy may no longer be authorised to send another). Empty if the upstream
/// announced none of them.
pub(crate) fn xclient_commands(client: &Peer, upstream: &Capabilities) -> Vec<String> {
    let name = client.name.as_ref();
    let greeting = client.greeting();
    let greeting = greeting.as_ref();
    let early = [
        ("HELO", greeting.map(|greeting| greeting.name.clone())),
        (
            "PROTO",
            Some(
                if greeting.is_some_and(|greeting| greeting.esmtp) {
                    "ESMTP"
                } else {
                    "SMTP"
                }
                .to_string(),
            ),
        ),
        ("LOGIN", client.verified_login().map(str::to_string)),
        ("DESTADDR", Some(xclient_address(client.local_address.ip()))),
        ("DESTPORT", Some(client.local_address.port().to_string())),
        // Sent even without a lookup: Postfix would otherwise keep the reverse name
        // of the proxy's own connection.
        (
            "REVERSE_NAME",
            Some(name.map_or(UNAVAILABLE.to_string(), |name| host_name(&name.reverse))),
        ),
    ];
    let last = [
        (
            "NAME",
            Some(name.map_or(UNAVAILABLE.to_string(), |name| host_name(&name.verified))),
        ),
        ("ADDR", Some(xclient_address(client.address.ip()))),
        ("PORT", Some(client.address.port().to_string())),
    ];
    let mut lines = Vec::new();
    for word in announced(early, upstream) {
        append_or_start(&mut lines, &word);
    }
    let last = announced(last, upstream).join(" ");
    if !last.is_empty() {
        append_or_start(&mut lines, &last);
    }
    lines
}

/// The `NAME=value` words of the attributes the upstream announced.
fn announced(
    attributes: impl IntoIterator<Item = (&'static str, Option<String>)>,
    upstream: &Capabilities,
) -> Vec<String> {
    attributes
        .into_iter()
        .filter(|(attribute, _)| upstream.xclient_attribute(attribute))
        .filter_map(|(attribute, value)| Some(xclient_word(attribute, &value?)))
        .collect()
}

/// What XCLIENT says for an unknown value.
const UNAVAILABLE: &str = "[UNAVAILABLE]";

/// Adds `words` to the last command if the line stays within the limit, or starts
/// another command with them.
fn append_or_start(lines: &mut Vec<String>, words: &str) {
    match lines.last_mut() {
        Some(line) if line.len() + 1 + words.len() <= XCLIENT_LINE_LIMIT => {
            line.push(' ');
            line.push_str(words);
        }
        _ => lines.push(format!("XCLIENT {words}")),
    }
}

/// `NAME=value`, xtext-encoded. A value longer than Postfix takes, or too long for a
/// command line once encoded, is sent as unknown instead (which, for LOGIN, fails
/// closed: the upstream sees no login).
fn xclient_word(attribute: &str, value: &str) -> String {
    let word = format!("{attribute}={}", encode_xtext(value));
    if value.len() <= XCLIENT_VALUE_LIMIT && "XCLIENT ".len() + word.len() <= XCLIENT_LINE_LIMIT {
        word
    } else {
        format!("{attribute}={UNAVAILABLE}")
    }
}

/// An address as XCLIENT writes it: IPv4 as is, IPv6 after `IPV6:`.
fn xclient_address(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    }
}

/// A looked-up host name as XCLIENT NAME and REVERSE_NAME take it.
fn host_name(name: &HostName) -> String {
    match name {
        HostName::Known(name) => name.clone(),
        HostName::Unavailable => UNAVAILABLE.to_string(),
        HostName::TemporarilyUnavailable => "[TEMPUNAVAIL]".to_string(),
    }
}

/// A PROXY protocol v1 header line.
pub(crate) fn proxy_v1_header(client: &Peer) -> Vec<u8> {
    let (source, destination) = same_family(client);
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// The PROXY protocol v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY protocol v2 header (command PROXY, transport STREAM).
pub(crate) fn proxy_v2_header(client: &Peer) -> Vec<u8> {
    let (source, destination) = same_family(client);
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x21); // version 2, command PROXY
    let addresses: Vec<u8> = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            header.push(0x11); // AF_INET, STREAM
            [&s.ip().octets()[..], &d.ip().octets()[..]].concat()
        }
        (s, d) => {
            header.push(0x21); // AF_INET6, STREAM
            [&ipv6_octets(s.ip())[..], &ipv6_octets(d.ip())[..]].concat()
        }
    };
    let length = (addresses.len() + 4) as u16;
    header.extend_from_slice(&length.to_be_bytes());
    header.extend_from_slice(&addresses);
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

/// A v1 header for the connection from `source` to `destination` (the capability
/// probe's own, which has no client).
pub(crate) fn proxy_v1_line(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    proxy_v1_header(&Peer::new(source, destination))
}

/// The v2 header for a connection that has no client: command LOCAL, no addresses.
pub(crate) fn proxy_v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0, 0]);
    header
}

/// Source and destination in one address family (both IPv6 if they differ).
fn same_family(client: &Peer) -> (SocketAddr, SocketAddr) {
    let source = SocketAddr::new(client.address.ip().to_canonical(), client.address.port());
    let destination = SocketAddr::new(
        client.local_address.ip().to_canonical(),
        client.local_address.port(),
    );
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let to_v6 = |a: SocketAddr| SocketAddr::new(IpAddr::V6(ipv6_of(a.ip())), a.port());
    (to_v6(source), to_v6(destination))
}

fn ipv6_of(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn ipv6_octets(ip: IpAddr) -> [u8; 16] {
    ipv6_of(ip).octets()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Reply;
    use crate::{client::Login, dns::ClientName};

    fn client(address: &str, local: &str) -> Peer {
        Peer {
            helo: Some("client.example".into()),
            esmtp: true,
            ..Peer::new(address.parse().unwrap(), local.parse().unwrap())
        }
    }

    fn verified(login: String) -> Option<Login> {
        Some(Login {
            name: login,
            verified_here: true,
        })
    }

    fn upstream(xclient: &str) -> Capabilities {
        Capabilities::from_ehlo(&Reply::multiline(250, vec!["mx".into(), xclient.into()]))
    }

    /// Postfix 3.7's announcement.
    const ALL: &str = "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT";

    fn named(reverse: HostName, verified: HostName) -> Option<ClientName> {
        Some(ClientName { reverse, verified })
    }

    #[test]
    fn xclient_sends_announced_attributes_only() {
        let info = client("192.0.2.7:40000", "198.51.100.1:25");
        let full = upstream(ALL);
        assert_eq!(
            xclient_commands(&info, &full),
            [
                "XCLIENT HELO=client.example PROTO=ESMTP DESTADDR=198.51.100.1 DESTPORT=25 \
              REVERSE_NAME=[UNAVAILABLE] NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=40000"
            ]
        );
        assert_eq!(
            xclient_commands(&info, &upstream("XCLIENT ADDR")),
            ["XCLIENT ADDR=192.0.2.7"]
        );
        assert!(xclient_commands(&info, &upstream("XCLIENT")).is_empty());
        let logged_in = Peer {
            login: verified("alice+x=y".into()),
            ..info.clone()
        };
        assert!(xclient_commands(&logged_in, &full)[0].contains(" LOGIN=alice+2Bx+3Dy "));
        assert!(!xclient_commands(&logged_in, &upstream("XCLIENT ADDR"))[0].contains("LOGIN"));
        // A passthrough login was verified by the upstream itself: not sent.
        let passthrough = Peer {
            login: Some(Login {
                name: "alice".into(),
                verified_here: false,
            }),
            ..info.clone()
        };
        assert!(!xclient_commands(&passthrough, &full)[0].contains("LOGIN"));
        let v6 = client("[2001:db8::7]:40000", "[::1]:25");
        assert!(xclient_commands(&v6, &full)[0].contains(" DESTADDR=IPV6:::1 "));
        assert!(xclient_commands(&v6, &full)[0].ends_with(" ADDR=IPV6:2001:db8::7 PORT=40000"));
        let mapped = client("[::ffff:192.0.2.9]:1", "[::ffff:127.0.0.1]:25");
        let line = &xclient_commands(&mapped, &full)[0];
        assert!(line.contains(" DESTADDR=127.0.0.1 ") && line.contains(" ADDR=192.0.2.9 "));
    }

    #[test]
    fn looked_up_names_go_in_name_and_reverse_name() {
        let full = upstream(ALL);
        let known = |name: &str| HostName::Known(name.into());
        let cases = [
            (
                named(known("mx.example.org"), known("mx.example.org")),
                "REVERSE_NAME=mx.example.org NAME=mx.example.org",
            ),
            (
                named(known("dsl-7.isp.example"), HostName::Unavailable),
                "REVERSE_NAME=dsl-7.isp.example NAME=[UNAVAILABLE]",
            ),
            (
                named(known("dsl-7.isp.example"), HostName::TemporarilyUnavailable),
                "REVERSE_NAME=dsl-7.isp.example NAME=[TEMPUNAVAIL]",
            ),
            (
                named(HostName::Unavailable, HostName::Unavailable),
                "REVERSE_NAME=[UNAVAILABLE] NAME=[UNAVAILABLE]",
            ),
            (
                named(
                    HostName::TemporarilyUnavailable,
                    HostName::TemporarilyUnavailable,
                ),
                "REVERSE_NAME=[TEMPUNAVAIL] NAME=[TEMPUNAVAIL]",
            ),
        ];
        for (name, expected) in cases {
            let info = Peer {
                name,
                ..client("192.0.2.7:40000", "198.51.100.1:25")
            };
            let commands = xclient_commands(&info, &full);
            assert_eq!(commands.len(), 1);
            assert!(commands[0].contains(expected), "{commands:?}");
        }
        // An upstream that does not know REVERSE_NAME takes NAME for both.
        let info = Peer {
            name: named(known("a.example"), HostName::Unavailable),
            ..client("192.0.2.7:40000", "198.51.100.1:25")
        };
        let old = xclient_commands(&info, &upstream("XCLIENT NAME ADDR"));
        assert_eq!(old, ["XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.7"]);
    }

    #[test]
    fn long_values_are_split_over_commands_with_name_and_address_last() {
        let label = "a".repeat(63);
        let long_name = [label.as_str(); 4].join(".");
        assert_eq!(long_name.len(), 255);
        let info = Peer {
            helo: Some(long_name.clone()),
            login: verified("l".repeat(200)),
            name: named(
                HostName::Known(long_name.clone()),
                HostName::Known(long_name.clone()),
            ),
            ..client("[2001:db8::7]:40000", "[2001:db8::1]:25")
        };
        let commands = xclient_commands(&info, &upstream(ALL));
        assert_eq!(commands.len(), 3, "{commands:?}");
        for command in &commands {
            assert!(command.len() <= 510, "{command}");
            assert!(command.starts_with("XCLIENT "));
        }
        let last = commands.last().unwrap();
        assert_eq!(
            last,
            &format!("XCLIENT NAME={long_name} ADDR=IPV6:2001:db8::7 PORT=40000")
        );
        for attribute in [
            "HELO",
            "PROTO",
            "LOGIN",
            "DESTADDR",
            "DESTPORT",
            "REVERSE_NAME",
        ] {
            let word = format!("{attribute}=");
            let count = commands.iter().filter(|c| c.contains(&word)).count();
            assert_eq!(count, 1, "{attribute}: {commands:?}");
        }
    }

    #[test]
    fn values_postfix_would_refuse_are_sent_as_unavailable() {
        // Postfix: "501 5.5.4 Error: attribute value too long" past 255 octets.
        let info = Peer {
            helo: Some("h".repeat(256)),
            login: verified("l".repeat(256)),
            ..client("192.0.2.7:40000", "198.51.100.1:25")
        };
        let commands = xclient_commands(&info, &upstream(ALL));
        assert_eq!(commands.len(), 1, "{commands:?}");
        assert!(
            commands[0].starts_with("XCLIENT HELO=[UNAVAILABLE] PROTO=ESMTP LOGIN=[UNAVAILABLE] ")
        );
        // Within 255 octets, but three times as long once xtext-encoded.
        let info = Peer {
            login: verified("+".repeat(200)),
            ..info
        };
        assert!(xclient_commands(&info, &upstream(ALL))[0].contains(" LOGIN=[UNAVAILABLE] "));
    }

    #[test]
    fn proxy_headers() {
        let info = client("192.0.2.7:40000", "127.0.0.1:25");
        assert_eq!(
            proxy_v1_header(&info),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n"
        );
        let v2 = proxy_v2_header(&info);
        assert_eq!(&v2[..12], &V2_SIGNATURE);
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&v2[16..], &[192, 0, 2, 7, 127, 0, 0, 1, 0x9c, 0x40, 0, 25]);
        let mixed = client("[2001:db8::7]:1", "127.0.0.1:25");
        assert_eq!(
            proxy_v1_header(&mixed),
            b"PROXY TCP6 2001:db8::7 ::ffff:127.0.0.1 1 25\r\n"
        );
        assert_eq!(proxy_v2_header(&mixed).len(), 16 + 36);
    }
}

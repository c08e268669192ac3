//! Telling the upstream who the real client is: Postfix's XCLIENT command
//! (XCLIENT_README) or a HAProxy PROXY protocol header, version 1 (text) or 2 (binary).

use std::net::{IpAddr, SocketAddr};

use crate::smtp::{capabilities::Capabilities, xtext};

/// What the upstream should know about the downstream client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address and port.
    pub address: SocketAddr,
    /// The local address the client connected to.
    pub local_address: SocketAddr,
    /// The name the client gave in HELO/EHLO.
    pub helo: Option<String>,
    /// True if the client greeted with EHLO.
    pub esmtp: bool,
    /// The login the proxy verified (edge AUTH), sent as XCLIENT LOGIN.
    pub login: Option<String>,
}

/// The XCLIENT command for this client, with only the attributes the upstream
/// announced. `None` if the upstream announced none of them.
pub fn xclient_command(client: &ClientInfo, upstream: &Capabilities) -> Option<String> {
    let ip = canonical_ip(client.address.ip());
    let address = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    };
    let mut attributes = vec![
        ("ADDR", address),
        ("PORT", client.address.port().to_string()),
        // The proxy does no reverse lookup; Postfix then shows the client as "unknown".
        ("NAME", "[UNAVAILABLE]".to_string()),
        (
            "PROTO",
            if client.esmtp { "ESMTP" } else { "SMTP" }.to_string(),
        ),
    ];
    if let Some(helo) = &client.helo {
        attributes.push(("HELO", helo.clone()));
    }
    if let Some(login) = &client.login {
        attributes.push(("LOGIN", login.clone()));
    }
    let words: Vec<String> = attributes
        .into_iter()
        .filter(|(name, _)| upstream.xclient_attribute(name))
        .map(|(name, value)| format!("{name}={}", xtext::encode(&value)))
        .collect();
    (!words.is_empty()).then(|| format!("XCLIENT {}", words.join(" ")))
}

/// A PROXY protocol v1 header line.
pub fn proxy_v1_header(client: &ClientInfo) -> Vec<u8> {
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
pub fn proxy_v2_header(client: &ClientInfo) -> Vec<u8> {
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

/// The v1 header for a connection that has no client (the capability probe).
pub const PROXY_V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

/// The v2 header for a connection that has no client: command LOCAL, no addresses.
pub fn proxy_v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0, 0]);
    header
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) become plain IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Source and destination in one address family (both IPv6 if they differ).
fn same_family(client: &ClientInfo) -> (SocketAddr, SocketAddr) {
    let source = SocketAddr::new(canonical_ip(client.address.ip()), client.address.port());
    let destination = SocketAddr::new(
        canonical_ip(client.local_address.ip()),
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

    fn client(address: &str, local: &str) -> ClientInfo {
        ClientInfo {
            address: address.parse().unwrap(),
            local_address: local.parse().unwrap(),
            helo: Some("client.example".into()),
            esmtp: true,
            login: None,
        }
    }

    fn upstream(xclient: &str) -> Capabilities {
        Capabilities::from_ehlo(&Reply::multiline(250, vec!["mx".into(), xclient.into()]))
    }

    #[test]
    fn xclient_sends_announced_attributes_only() {
        let info = client("192.0.2.7:40000", "127.0.0.1:25");
        let full = upstream("XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN");
        assert_eq!(
            xclient_command(&info, &full).unwrap(),
            "XCLIENT ADDR=192.0.2.7 PORT=40000 NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.example"
        );
        assert_eq!(
            xclient_command(&info, &upstream("XCLIENT ADDR")).unwrap(),
            "XCLIENT ADDR=192.0.2.7"
        );
        assert_eq!(xclient_command(&info, &upstream("XCLIENT")), None);
        let logged_in = ClientInfo {
            login: Some("alice+x=y".into()),
            ..info.clone()
        };
        assert!(
            xclient_command(&logged_in, &full)
                .unwrap()
                .ends_with(" HELO=client.example LOGIN=alice+2Bx+3Dy")
        );
        assert!(
            !xclient_command(&logged_in, &upstream("XCLIENT ADDR"))
                .unwrap()
                .contains("LOGIN")
        );
        let v6 = client("[2001:db8::7]:40000", "[::1]:25");
        assert!(
            xclient_command(&v6, &full)
                .unwrap()
                .starts_with("XCLIENT ADDR=IPV6:2001:db8::7 ")
        );
        let mapped = client("[::ffff:192.0.2.9]:1", "[::1]:25");
        assert!(
            xclient_command(&mapped, &full)
                .unwrap()
                .starts_with("XCLIENT ADDR=192.0.2.9 ")
        );
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

//! The Received trace field (RFC 5321 §4.4) the proxy can put at the top of a message
//! it relays: whom it came from (HELO name, host name, address), who took it, over
//! which protocol (RFC 3848, RFC 6531 `with` values), the session id, the recipient
//! when there is only one, and when. Text only; the session decides whether to add it.

use std::{fmt::Write, net::IpAddr};

use time::{OffsetDateTime, format_description::well_known::Rfc2822};

/// What a Received field says.
#[derive(Debug, Clone)]
pub(crate) struct Received<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: Option<&'a str>,
    /// The client's forward-confirmed host name, if known.
    pub client_name: Option<&'a str>,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The proxy's host name.
    pub by: &'a str,
    /// The client greeted with EHLO.
    pub esmtp: bool,
    /// The session is encrypted.
    pub tls: bool,
    /// The client authenticated.
    pub authenticated: bool,
    /// The transaction uses SMTPUTF8.
    pub smtputf8: bool,
    /// The session id, as in the proxy's logs.
    pub id: &'a str,
    /// The recipient, given only when the message has exactly one (so that a copy to
    /// one recipient does not reveal the others).
    pub recipient: Option<&'a str>,
    /// When the message arrived.
    pub date: OffsetDateTime,
}

impl Received<'_> {
    /// The `with` protocol name: SMTP, ESMTP or UTF8SMTP, then S for TLS and A for AUTH.
    pub(crate) fn protocol(&self) -> String {
        let mut protocol = String::from(match (self.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        });
        if self.esmtp || self.smtputf8 {
            if self.tls {
                protocol.push('S');
            }
            if self.authenticated {
                protocol.push('A');
            }
        }
        protocol
    }

    /// The whole field, folded over lines of a few dozen octets, ending in CRLF.
    pub(crate) fn render(&self) -> String {
        let literal = address_literal(self.client_ip);
        let mut field = format!(
            "Received: from {} ({} {literal})\r\n\tby {} (Portcullis) with {} id {}",
            self.helo.map_or(literal.clone(), neuter),
            self.client_name.unwrap_or("unknown"),
            self.by,
            self.protocol(),
            self.id,
        );
        if let Some(recipient) = self.recipient {
            let _ = write!(field, "\r\n\tfor <{recipient}>");
        }
        let date = self
            .date
            .format(&Rfc2822)
            .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into());
        let _ = write!(field, ";\r\n\t{date}\r\n");
        field
    }
}

/// A client's HELO name as a header can carry it: anything but printable ASCII, and
/// the characters that would end the from-clause or open a comment, become `?` (as
/// Postfix's smtpd does), so the field stays ASCII and parses the same.
fn neuter(helo: &str) -> String {
    helo.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !"()<>;\\\"".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// An address as RFC 5321 writes it in a domain's place: `[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`.
fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received() -> Received<'static> {
        Received {
            helo: Some("client.example"),
            client_name: Some("mx.client.example"),
            client_ip: "192.0.2.7".parse().unwrap(),
            by: "mx.example.com",
            esmtp: true,
            tls: false,
            authenticated: false,
            smtputf8: false,
            id: "6750a1b2000001",
            recipient: Some("user@example.com"),
            date: OffsetDateTime::from_unix_timestamp(1_796_362_209).unwrap(),
        }
    }

    #[test]
    fn a_field_names_client_proxy_protocol_recipient_and_date() {
        assert_eq!(
            received().render(),
            "Received: from client.example (mx.client.example [192.0.2.7])\r\n\
             \tby mx.example.com (Portcullis) with ESMTP id 6750a1b2000001\r\n\
             \tfor <user@example.com>;\r\n\
             \tFri, 04 Dec 2026 05:30:09 +0000\r\n"
        );
        let anonymous = Received {
            helo: None,
            client_name: None,
            client_ip: "2001:db8::7".parse().unwrap(),
            recipient: None,
            ..received()
        };
        assert_eq!(
            anonymous.render(),
            "Received: from [IPv6:2001:db8::7] (unknown [IPv6:2001:db8::7])\r\n\
             \tby mx.example.com (Portcullis) with ESMTP id 6750a1b2000001;\r\n\
             \tFri, 04 Dec 2026 05:30:09 +0000\r\n"
        );
    }

    #[test]
    fn the_protocol_says_ehlo_tls_auth_and_smtputf8() {
        let cases = [
            (false, false, false, false, "SMTP"),
            (true, false, false, false, "ESMTP"),
            (true, true, false, false, "ESMTPS"),
            (true, false, true, false, "ESMTPA"),
            (true, true, true, false, "ESMTPSA"),
            (true, true, true, true, "UTF8SMTPSA"),
            (true, false, false, true, "UTF8SMTP"),
        ];
        for (esmtp, tls, authenticated, smtputf8, expected) in cases {
            let field = Received {
                esmtp,
                tls,
                authenticated,
                smtputf8,
                ..received()
            };
            assert_eq!(field.protocol(), expected);
        }
    }

    #[test]
    fn a_helo_name_cannot_break_the_field() {
        let field = Received {
            helo: Some("pc(1);<é>\\\"x"),
            ..received()
        };
        assert!(
            field
                .render()
                .starts_with("Received: from pc?1???????x (mx.client.example [192.0.2.7])\r\n")
        );
    }

    #[test]
    fn mapped_ipv4_is_written_as_ipv4() {
        let field = Received {
            client_ip: "::ffff:192.0.2.9".parse().unwrap(),
            ..received()
        };
        assert!(field.render().contains("(mx.client.example [192.0.2.9])"));
    }
}

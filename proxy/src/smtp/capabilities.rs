//! ESMTP service extensions: reading them from an EHLO reply, intersecting what the
//! upstream offers with what the proxy can relay, and mapping MAIL/RCPT parameters to
//! the extension that defines them.

use portcullis_syntax::param::{self, Verb};

use super::reply::Reply;

/// The service extensions the relay can carry end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// RFC 2920.
    Pipelining,
    /// RFC 1870.
    Size,
    /// RFC 6152.
    EightBitMime,
    /// RFC 6531.
    SmtpUtf8,
    /// RFC 3461.
    Dsn,
    /// RFC 2034.
    EnhancedStatusCodes,
    /// RFC 4954. Never copied from the upstream's offer: each listener decides.
    Auth,
}

impl Extension {
    /// Every relayable extension, in the order they are advertised.
    pub const ALL: [Extension; 7] = [
        Extension::Pipelining,
        Extension::Size,
        Extension::EightBitMime,
        Extension::SmtpUtf8,
        Extension::Dsn,
        Extension::EnhancedStatusCodes,
        Extension::Auth,
    ];

    /// The EHLO keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Extension::Pipelining => "PIPELINING",
            Extension::Size => "SIZE",
            Extension::EightBitMime => "8BITMIME",
            Extension::SmtpUtf8 => "SMTPUTF8",
            Extension::Dsn => "DSN",
            Extension::EnhancedStatusCodes => "ENHANCEDSTATUSCODES",
            Extension::Auth => "AUTH",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The extension that defines a MAIL FROM parameter, if we relay it.
    pub fn for_mail_param(keyword: &str) -> Option<Extension> {
        Self::defining(Verb::Mail, keyword)
    }

    /// The extension that defines a RCPT TO parameter, if we relay it.
    pub fn for_rcpt_param(keyword: &str) -> Option<Extension> {
        Self::defining(Verb::Rcpt, keyword)
    }

    fn defining(verb: Verb, keyword: &str) -> Option<Extension> {
        let name = param::extension_of(verb, keyword)?;
        Extension::ALL.into_iter().find(|e| e.keyword() == name)
    }
}

/// A set of extensions, plus the SIZE limit and the XCLIENT attributes an upstream
/// announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    bits: u8,
    /// The SIZE limit announced (`None`: no limit given).
    pub size_limit: Option<u64>,
    /// The XCLIENT attribute names announced, if XCLIENT was.
    pub xclient: Option<Vec<String>>,
    /// The SASL mechanisms announced with AUTH (upper case).
    pub auth_mechanisms: Vec<String>,
    /// STARTTLS was announced (only used toward the upstream; never relayed).
    pub starttls: bool,
}

impl Capabilities {
    /// Every extension the proxy relays, as if an upstream offered them all (what
    /// `portcullis replay` assumes).
    pub fn relayable() -> Self {
        let mut capabilities = Capabilities::default();
        for extension in Extension::ALL {
            capabilities.insert(extension);
        }
        capabilities
    }

    /// Reads the extension lines of an EHLO reply (the first line is the greeting).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut capabilities = Capabilities::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            if keyword == "XCLIENT" {
                capabilities.xclient = Some(words.map(str::to_ascii_uppercase).collect());
                continue;
            }
            // "AUTH=PLAIN LOGIN" is the pre-RFC form some servers still announce.
            if let Some(first) = keyword.strip_prefix("AUTH=") {
                capabilities.insert(Extension::Auth);
                capabilities.auth_mechanisms.push(first.to_string());
                capabilities
                    .auth_mechanisms
                    .extend(words.map(str::to_ascii_uppercase));
                continue;
            }
            if keyword == "STARTTLS" {
                capabilities.starttls = true;
                continue;
            }
            if keyword == "AUTH" {
                capabilities.insert(Extension::Auth);
                capabilities
                    .auth_mechanisms
                    .extend(words.map(str::to_ascii_uppercase));
                continue;
            }
            let Some(extension) = Extension::ALL.into_iter().find(|e| e.keyword() == keyword)
            else {
                continue;
            };
            capabilities.insert(extension);
            if extension == Extension::Size {
                capabilities.size_limit =
                    words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
            }
        }
        capabilities
    }

    /// Adds an extension.
    pub fn insert(&mut self, extension: Extension) {
        self.bits |= extension.bit();
    }

    /// True if the extension is in the set.
    pub fn has(&self, extension: Extension) -> bool {
        self.bits & extension.bit() != 0
    }

    /// True if the upstream offers XCLIENT with this attribute.
    pub fn xclient_attribute(&self, name: &str) -> bool {
        self.xclient
            .as_ref()
            .is_some_and(|names| names.iter().any(|n| n == name))
    }

    /// What to offer downstream: the extensions both sides support, and the smaller of
    /// the two SIZE limits.
    pub fn offer(&self, own_size_limit: u64) -> Capabilities {
        Capabilities {
            bits: self.bits & !Extension::Auth.bit(),
            size_limit: Some(
                self.size_limit
                    .map_or(own_size_limit, |limit| limit.min(own_size_limit)),
            ),
            xclient: None,
            auth_mechanisms: Vec::new(),
            starttls: false,
        }
    }

    /// The EHLO reply lines after the greeting, for the extensions in the set.
    pub fn ehlo_lines(&self) -> Vec<String> {
        Extension::ALL
            .into_iter()
            .filter(|&extension| self.has(extension))
            .map(|extension| match (extension, self.size_limit) {
                (Extension::Size, Some(limit)) => format!("SIZE {limit}"),
                (Extension::Auth, _) => format!("AUTH {}", self.auth_mechanisms.join(" ")),
                _ => extension.keyword().to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(lines: &[&str]) -> Reply {
        Reply::multiline(250, lines.iter().map(|l| l.to_string()).collect())
    }

    #[test]
    fn reads_an_ehlo_reply() {
        let caps = Capabilities::from_ehlo(&ehlo(&[
            "mx.example",
            "PIPELINING",
            "SIZE 10240000",
            "VRFY",
            "ETRN",
            "STARTTLS",
            "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
            "AUTH PLAIN login",
        ]));
        for extension in Extension::ALL {
            assert!(caps.has(extension), "{extension:?}");
        }
        assert_eq!(caps.size_limit, Some(10_240_000));
        assert!(caps.xclient_attribute("ADDR") && caps.xclient_attribute("HELO"));
        assert!(!caps.xclient_attribute("DESTADDR"));
        assert_eq!(caps.auth_mechanisms, ["PLAIN", "LOGIN"]);
        let old_style = Capabilities::from_ehlo(&ehlo(&["mx", "AUTH=LOGIN PLAIN"]));
        assert!(old_style.has(Extension::Auth));
        assert_eq!(old_style.auth_mechanisms, ["LOGIN", "PLAIN"]);
        // Each listener decides about AUTH itself: it is never copied into the offer.
        assert!(!caps.offer(1000).has(Extension::Auth));
    }

    #[test]
    fn offers_the_intersection_and_the_smaller_size() {
        let upstream = Capabilities::from_ehlo(&ehlo(&["mx", "SIZE", "8BITMIME"]));
        let offer = upstream.offer(5000);
        assert_eq!(offer.ehlo_lines(), ["SIZE 5000", "8BITMIME"]);
        let upstream = Capabilities::from_ehlo(&ehlo(&["mx", "SIZE 1000", "PIPELINING"]));
        assert_eq!(
            upstream.offer(5000).ehlo_lines(),
            ["PIPELINING", "SIZE 1000"]
        );
        assert_eq!(
            Capabilities::default().offer(5000).ehlo_lines(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn maps_parameters_to_extensions() {
        let mail = [
            ("size", Some(Extension::Size)),
            ("BODY", Some(Extension::EightBitMime)),
            ("SMTPUTF8", Some(Extension::SmtpUtf8)),
            ("RET", Some(Extension::Dsn)),
            ("ENVID", Some(Extension::Dsn)),
            ("XFOO", None),
            ("AUTH", Some(Extension::Auth)),
        ];
        for (keyword, extension) in mail {
            assert_eq!(Extension::for_mail_param(keyword), extension, "{keyword}");
        }
        assert_eq!(Extension::for_rcpt_param("notify"), Some(Extension::Dsn));
        assert_eq!(Extension::for_rcpt_param("SIZE"), None);
    }
}

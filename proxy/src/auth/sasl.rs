//! The server side of the PLAIN (RFC 4616) and LOGIN SASL mechanisms, as SMTP
//! carries them (RFC 4954): base64 challenges and responses, `*` to cancel, `=` for
//! an empty initial response.

use base64::{Engine, engine::general_purpose::STANDARD};

use super::{Credentials, Mechanism, Secret};

/// The longest response line accepted (RFC 4954 §4: at least 12288 octets).
pub const RESPONSE_LINE_LIMIT: usize = 12288 + 2;

/// Why an exchange ended without credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*`.
    #[error("authentication cancelled")]
    Cancelled,
    /// A response was not valid base64.
    #[error("response is not valid base64")]
    BadBase64,
    /// A response decoded but is not what the mechanism expects.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// What the server sends next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A 334 challenge with this (already base64) text; a response line follows.
    Challenge(&'static str),
    /// The exchange is complete.
    Done(Credentials),
}

/// An exchange in progress.
#[derive(Debug)]
pub struct Exchange {
    mechanism: Mechanism,
    login: Option<String>,
}

/// "Username:" and "Password:" in base64, the LOGIN mechanism's prompts.
const USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
const PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

impl Exchange {
    /// Starts an exchange, with the initial response of the AUTH command if any.
    pub fn start(mechanism: Mechanism, initial: Option<&str>) -> Result<(Self, Step), SaslError> {
        let mut exchange = Self {
            mechanism,
            login: None,
        };
        let step = match (mechanism, initial) {
            (Mechanism::Plain, None) => Step::Challenge(""),
            (Mechanism::Login, None) => Step::Challenge(USERNAME_PROMPT),
            (_, Some(initial)) => exchange.respond(initial)?,
        };
        Ok((exchange, step))
    }

    /// Takes the client's response to the last challenge.
    pub fn respond(&mut self, line: &str) -> Result<Step, SaslError> {
        let line = line.trim_end_matches([' ', '\t']);
        if line == "*" {
            return Err(SaslError::Cancelled);
        }
        let decoded = decode(line)?;
        match (self.mechanism, self.login.take()) {
            (Mechanism::Plain, _) => plain(decoded).map(Step::Done),
            (Mechanism::Login, None) => {
                let login = text(decoded, "login is not UTF-8")?;
                if login.is_empty() {
                    return Err(SaslError::Malformed("empty login"));
                }
                self.login = Some(login);
                Ok(Step::Challenge(PASSWORD_PROMPT))
            }
            (Mechanism::Login, Some(login)) => Ok(Step::Done(Credentials {
                mechanism: Mechanism::Login,
                login,
                password: Secret::new(text(decoded, "password is not UTF-8")?),
            })),
        }
    }
}

fn decode(line: &str) -> Result<Vec<u8>, SaslError> {
    if line == "=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::BadBase64)
}

fn text(bytes: Vec<u8>, why: &'static str) -> Result<String, SaslError> {
    String::from_utf8(bytes).map_err(|_| SaslError::Malformed(why))
}

/// `[authzid] NUL authcid NUL passwd`. An authorization identity other than the
/// login itself is refused: the proxy does not let one user act as another.
fn plain(decoded: Vec<u8>) -> Result<Credentials, SaslError> {
    let text = text(decoded, "not UTF-8")?;
    let mut parts = text.splitn(3, '\0');
    let (Some(authzid), Some(login), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "expected authzid NUL login NUL password",
        ));
    };
    if login.is_empty() || password.contains('\0') {
        return Err(SaslError::Malformed("empty login or NUL in password"));
    }
    if !authzid.is_empty() && authzid != login {
        return Err(SaslError::Malformed(
            "authorization identity differs from login",
        ));
    }
    Ok(Credentials {
        mechanism: Mechanism::Plain,
        login: login.to_string(),
        password: Secret::new(password.to_string()),
    })
}

/// The login in a client's responses, without checking anything (passthrough mode
/// learns who logged in this way): PLAIN's authcid, LOGIN's first response.
pub fn login_of(mechanism: Mechanism, first_response: &str) -> Option<String> {
    let decoded = decode(first_response.trim_end()).ok()?;
    match mechanism {
        Mechanism::Plain => plain(decoded).ok().map(|c| c.login),
        Mechanism::Login => String::from_utf8(decoded).ok().filter(|l| !l.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        STANDARD.encode(text)
    }

    fn done(step: Step) -> (String, String) {
        match step {
            Step::Done(c) => (c.login, c.password.expose().to_string()),
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64("\0alice\0s3cret"))).unwrap();
        assert_eq!(done(step), ("alice".into(), "s3cret".into()));
        let (mut exchange, step) = Exchange::start(Mechanism::Plain, None).unwrap();
        assert_eq!(step, Step::Challenge(""));
        let step = exchange.respond(&b64("alice\0alice\0pw")).unwrap();
        assert_eq!(done(step), ("alice".into(), "pw".into()));
    }

    #[test]
    fn login_asks_for_name_then_password() {
        let (mut exchange, step) = Exchange::start(Mechanism::Login, None).unwrap();
        assert_eq!(step, Step::Challenge(USERNAME_PROMPT));
        assert_eq!(
            exchange.respond(&b64("bob")).unwrap(),
            Step::Challenge(PASSWORD_PROMPT)
        );
        assert_eq!(
            done(exchange.respond(&b64("hunter2")).unwrap()),
            ("bob".into(), "hunter2".into())
        );
        let (mut exchange, step) = Exchange::start(Mechanism::Login, Some(&b64("bob"))).unwrap();
        assert_eq!(step, Step::Challenge(PASSWORD_PROMPT));
        assert_eq!(done(exchange.respond("=").unwrap()).1, "");
    }

    #[test]
    fn bad_responses() {
        let cases: &[(Mechanism, &str, SaslError)] = &[
            (Mechanism::Plain, "*", SaslError::Cancelled),
            (Mechanism::Plain, "not base64!", SaslError::BadBase64),
            (
                Mechanism::Plain,
                &b64("no-nul"),
                SaslError::Malformed("expected authzid NUL login NUL password"),
            ),
            (
                Mechanism::Plain,
                &b64("\0\0pw"),
                SaslError::Malformed("empty login or NUL in password"),
            ),
            (
                Mechanism::Plain,
                &b64("root\0alice\0pw"),
                SaslError::Malformed("authorization identity differs from login"),
            ),
            (Mechanism::Login, "*", SaslError::Cancelled),
            (Mechanism::Login, "=", SaslError::Malformed("empty login")),
        ];
        for (mechanism, response, expected) in cases {
            let (mut exchange, _) = Exchange::start(*mechanism, None).unwrap();
            assert_eq!(
                exchange.respond(response).unwrap_err(),
                *expected,
                "{response}"
            );
        }
    }

    #[test]
    fn logins_are_read_without_checking() {
        assert_eq!(
            login_of(Mechanism::Plain, &b64("\0carol\0x")),
            Some("carol".into())
        );
        assert_eq!(
            login_of(Mechanism::Login, &b64("carol")),
            Some("carol".into())
        );
        assert_eq!(login_of(Mechanism::Login, "*"), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("s3cret".into());
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}

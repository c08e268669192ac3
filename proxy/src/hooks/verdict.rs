//! What plugins return, checked and converted before the session uses it: a verdict's
//! reply must fit its kind and carry no control characters, and a rewritten path
//! becomes a command line the SMTP parser checks like a client's.

use crate::{
    message::Edit,
    plugin_host::{PluginError, abi},
    smtp::{EnhancedCode, Reply},
};

/// The SMTP parameters as plugins see them.
pub(super) fn abi_params(params: &[crate::smtp::Param]) -> Vec<abi::Param> {
    params
        .iter()
        .map(|p| abi::Param {
            keyword: p.keyword.clone(),
            value: p.value.clone(),
        })
        .collect()
}

/// The command line a rewrite stands for; parsing it validates the rewrite, so a
/// plugin can never inject anything the parser would not accept from a client.
pub(super) fn rewritten_line(
    verb: &str,
    address: &str,
    params: &[abi::Param],
    rewrite: abi::PathRewrite,
) -> String {
    let address = rewrite.address.unwrap_or_else(|| address.to_string());
    let params = rewrite.params.unwrap_or_else(|| params.to_vec());
    let mut line = format!("{verb}<{address}>");
    for param in params {
        line.push(' ');
        line.push_str(&param.keyword);
        if let Some(value) = param.value {
            line.push('=');
            line.push_str(&value);
        }
    }
    line
}

/// A verdict in a few words, for the replay trace.
pub(super) fn describe(verdict: &abi::Verdict) -> String {
    match verdict {
        abi::Verdict::Continue => "continue".into(),
        abi::Verdict::Accept => "accept".into(),
        abi::Verdict::Discard => "discard".into(),
        abi::Verdict::Reject(reply) => format!("reject {}", to_reply(reply.clone())),
        abi::Verdict::Tempfail(reply) => format!("tempfail {}", to_reply(reply.clone())),
        abi::Verdict::Disconnect(text) => {
            format!("disconnect {}", text.as_deref().unwrap_or_default())
        }
    }
}

/// A plugin's message edit as the message layer applies it.
pub(super) fn to_edit(edit: abi::MessageEdit) -> Edit {
    match edit {
        abi::MessageEdit::AddHeader(h) => Edit::AddHeader(h.name, h.value),
        abi::MessageEdit::InsertHeader((index, h)) => {
            Edit::InsertHeader(index as usize, h.name, h.value)
        }
        abi::MessageEdit::ChangeHeader((name, nth, value)) => {
            Edit::ChangeHeader(name, nth as usize, value)
        }
        abi::MessageEdit::RemoveHeader(name) => Edit::RemoveHeader(name),
        abi::MessageEdit::ReplaceBody(body) => Edit::ReplaceBody(body),
        abi::MessageEdit::AddRecipient(address) => Edit::AddRecipient(address),
        abi::MessageEdit::RemoveRecipient(address) => Edit::RemoveRecipient(address),
        abi::MessageEdit::Quarantine(reason) => Edit::Quarantine(reason),
    }
}

/// A plugin's reply (already validated) as a typed reply.
pub(super) fn to_reply(reply: abi::Reply) -> Reply {
    match reply
        .enhanced
        .as_deref()
        .and_then(|e| EnhancedCode::parse_prefix(e).map(|(code, _)| code))
    {
        Some(enhanced) => Reply::new(reply.code, enhanced, reply.text),
        None => Reply::plain(reply.code, reply.text),
    }
}

/// Checks a verdict before the proxy uses it.
pub(super) fn validate(verdict: &abi::Verdict) -> Result<(), PluginError> {
    let (reply, class) = match verdict {
        abi::Verdict::Reject(reply) => (reply, 5),
        abi::Verdict::Tempfail(reply) => (reply, 4),
        abi::Verdict::Disconnect(Some(text)) => return check_text(text),
        _ => return Ok(()),
    };
    if reply.code / 100 != class || reply.code > 599 {
        return Err(PluginError::Invalid(format!(
            "reply code {} in a {} verdict",
            reply.code,
            if class == 5 { "reject" } else { "tempfail" }
        )));
    }
    if let Some(enhanced) = &reply.enhanced {
        match EnhancedCode::parse_prefix(enhanced) {
            Some((code, "")) if u16::from(code.class) == class => {}
            _ => {
                return Err(PluginError::Invalid(format!(
                    "enhanced code {enhanced:?} does not fit reply code {}",
                    reply.code
                )));
            }
        }
    }
    check_text(&reply.text)
}

/// Reply text goes on one SMTP line: no CR, LF or other control characters.
fn check_text(text: &str) -> Result<(), PluginError> {
    if text.chars().any(char::is_control) {
        return Err(PluginError::Invalid(
            "control characters (CR, LF, ...) in reply text".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::command;

    fn reply(code: u16, enhanced: Option<&str>, text: &str) -> abi::Reply {
        abi::Reply {
            code,
            enhanced: enhanced.map(Into::into),
            text: text.into(),
        }
    }

    #[test]
    fn verdicts_are_validated() {
        let cases = [
            (abi::Verdict::Reject(reply(550, Some("5.7.1"), "no")), true),
            (abi::Verdict::Reject(reply(250, None, "fine")), false),
            (abi::Verdict::Reject(reply(450, None, "later")), false),
            (
                abi::Verdict::Tempfail(reply(451, Some("4.3.0"), "later")),
                true,
            ),
            (
                abi::Verdict::Tempfail(reply(451, Some("5.3.0"), "later")),
                false,
            ),
            (
                abi::Verdict::Tempfail(reply(451, Some("4.3"), "later")),
                false,
            ),
            (
                abi::Verdict::Reject(reply(550, None, "a\r\nRCPT TO:<x@y.z>")),
                false,
            ),
            (abi::Verdict::Disconnect(Some("bye\n".into())), false),
            (abi::Verdict::Continue, true),
        ];
        for (verdict, valid) in cases {
            assert_eq!(validate(&verdict).is_ok(), valid, "{verdict:?}");
        }
    }

    #[test]
    fn rewrites_become_command_lines_the_parser_checks() {
        let rewrite = abi::PathRewrite {
            address: Some("new@example.com".into()),
            params: None,
        };
        let line = rewritten_line(
            "RCPT TO:",
            "old@example.com",
            &[abi::Param {
                keyword: "NOTIFY".into(),
                value: Some("NEVER".into()),
            }],
            rewrite,
        );
        assert_eq!(line, "RCPT TO:<new@example.com> NOTIFY=NEVER");
        let evil = abi::PathRewrite {
            address: Some("x@y.z>\r\nRCPT TO:<victim@example.com".into()),
            params: None,
        };
        let line = rewritten_line("RCPT TO:", "a@b.c", &[], evil);
        assert!(command::parse(line.as_bytes()).is_err());
    }
}

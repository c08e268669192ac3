//! What plugins return, checked and converted before the session uses it: a verdict's
//! reply must fit its kind and the wire, and a rewrite must follow the rules a client's
//! command follows (`portcullis_syntax`), then survive rendering and parsing back
//! unchanged.

use std::fmt::Write;

use portcullis_syntax::{
    Violation, address,
    param::{self, Verb},
    reply as syntax_reply,
};

use crate::{
    message::{Edit, EditError},
    plugin_host::{PluginError, view},
    smtp::{
        Command, EnhancedCode, MailCommand, Param, Path, RcptCommand, Reply,
        capabilities::{Capabilities, Extension},
        command,
    },
};

/// The SMTP parameters as plugins see them.
pub(super) fn plugin_params(params: &[crate::smtp::Param]) -> Vec<view::Param> {
    params
        .iter()
        .map(|p| view::Param {
            keyword: p.keyword.clone(),
            value: p.value.clone(),
        })
        .collect()
}

/// The rules a MAIL or RCPT rewrite must follow besides the syntax: the parameters
/// of extensions the client was offered (what the proxy relays and the upstream
/// offers), and whether the transaction may carry UTF-8 addresses.
pub(super) struct PathRules<'a> {
    /// What the last EHLO offered the client.
    pub(super) offered: &'a Capabilities,
    /// RCPT only: the transaction's MAIL carries SMTPUTF8.
    pub(super) smtputf8: bool,
}

/// Why a plugin's rewrite or edit cannot be used (its `on_error` policy applies).
#[derive(Debug, thiserror::Error)]
pub(super) enum InvalidResult {
    /// Against the syntax a client's command must follow.
    #[error(transparent)]
    Syntax(#[from] Violation),
    /// A parameter of an extension the client was not offered.
    #[error(
        "parameter {0:?}: its extension was not offered to this client (the proxy relays it only when the upstream offers it)"
    )]
    Unoffered(String),
    /// A UTF-8 address in a transaction without SMTPUTF8.
    #[error("address {0:?}: a UTF-8 address needs SMTPUTF8 on MAIL (RFC 6531)")]
    NeedsSmtputf8(String),
    /// Rendered, it reads back as something else.
    #[error("the rewrite renders as {0:?}, which does not parse back to itself")]
    RoundTrip(String),
    /// A message edit the message cannot take.
    #[error(transparent)]
    Edit(#[from] EditError),
}

/// Checks a MAIL or RCPT rewrite by the rules every client command follows, then
/// renders it with the one renderer, parses that back and compares, so nothing can
/// reach the upstream that differs from what the plugin asked for. Returns the command.
pub(super) fn checked_rewrite(
    verb: Verb,
    address: &str,
    params: &[view::Param],
    rules: &PathRules<'_>,
) -> Result<Command, InvalidResult> {
    match verb {
        Verb::Mail => address::check_reverse_path(address),
        Verb::Rcpt => address::check_forward_path(address),
    }?;
    param::check_params(
        verb,
        params
            .iter()
            .map(|p| (p.keyword.as_str(), p.value.as_deref())),
    )?;
    for keyword in params.iter().map(|p| &p.keyword) {
        let extension = match verb {
            Verb::Mail => Extension::for_mail_param(keyword),
            Verb::Rcpt => Extension::for_rcpt_param(keyword),
        };
        if !extension.is_some_and(|e| rules.offered.has(e)) {
            return Err(InvalidResult::Unoffered(keyword.clone()));
        }
    }
    let smtputf8 = match verb {
        Verb::Mail => params
            .iter()
            .any(|p| p.keyword.eq_ignore_ascii_case("SMTPUTF8")),
        Verb::Rcpt => rules.smtputf8,
    };
    if !address.is_ascii() && !smtputf8 {
        return Err(InvalidResult::NeedsSmtputf8(address.to_string()));
    }
    let params: Vec<Param> = params
        .iter()
        .map(|p| Param {
            keyword: p.keyword.clone(),
            value: p.value.clone(),
        })
        .collect();
    let path = Path::bracketed(address);
    let built = match verb {
        Verb::Mail => Command::Mail(MailCommand {
            reverse_path: path,
            params,
        }),
        Verb::Rcpt => Command::Rcpt(RcptCommand {
            forward_path: path,
            params,
        }),
    };
    let line = match &built {
        Command::Mail(mail) => mail.to_string(),
        Command::Rcpt(rcpt) => rcpt.to_string(),
        _ => unreachable!("built above"),
    };
    match command::parse(line.as_bytes()) {
        Ok(parsed) if parsed == built => Ok(built),
        _ => Err(InvalidResult::RoundTrip(line)),
    }
}

/// Checks a HELO name a plugin gives the upstream: a domain or address literal that
/// parses back, as the argument of EHLO, to itself.
pub(super) fn checked_helo(name: &str) -> Result<String, InvalidResult> {
    address::check_helo_name(name)?;
    let line = format!("EHLO {name}");
    match command::parse(line.as_bytes()) {
        Ok(Command::Ehlo(parsed)) if parsed == name => Ok(parsed),
        _ => Err(InvalidResult::RoundTrip(line)),
    }
}

/// A verdict in a few words, for the replay trace.
pub(super) fn describe(verdict: &view::Verdict) -> String {
    match verdict {
        view::Verdict::Continue => "continue".into(),
        view::Verdict::Accept => "accept".into(),
        view::Verdict::Discard => "discard".into(),
        view::Verdict::Reject(reply) => format!("reject {}", to_reply(reply.clone())),
        view::Verdict::Tempfail(reply) => format!("tempfail {}", to_reply(reply.clone())),
        view::Verdict::Disconnect(text) => {
            format!("disconnect {}", text.as_deref().unwrap_or_default())
        }
    }
}

/// A rewritten command as it would go upstream, for the replay trace.
pub(super) fn describe_command(command: &Command) -> String {
    match command {
        Command::Mail(mail) => mail.to_string(),
        Command::Rcpt(rcpt) => rcpt.to_string(),
        other => format!("{other:?}"),
    }
}

/// An edit in a few words, for the replay trace.
pub(super) fn describe_edit(edit: &Edit) -> String {
    match edit {
        Edit::AddHeader { name, value } => format!("add header {name}: {value}"),
        Edit::InsertHeader { index, name, value } => {
            format!("insert header at {index}: {name}: {value}")
        }
        Edit::ChangeHeader { name, index, value } => match value {
            Some(value) => format!("change header {name} #{index} to {value}"),
            None => format!("delete header {name} #{index}"),
        },
        Edit::RemoveHeader(name) => format!("remove every {name} header"),
        Edit::ReplaceBody(body) => format!("replace the body ({} octets)", body.len()),
        Edit::AppendBody(text) => format!("append to the body ({} octets)", text.len()),
        Edit::PrependBody(text) => format!("prepend to the body ({} octets)", text.len()),
        Edit::AddRecipient(address) => format!("add recipient <{address}>"),
        Edit::RemoveRecipient(address) => format!("remove recipient <{address}>"),
        Edit::Quarantine(reason) => format!("quarantine ({reason})"),
        Edit::ChangeSender { address, params } => {
            let mut text = format!("change the sender to <{address}>");
            for (keyword, value) in params {
                match value {
                    Some(value) => write!(text, " {keyword}={value}"),
                    None => write!(text, " {keyword}"),
                }
                .expect("writing to a String");
            }
            text
        }
    }
}

/// A plugin's reply (already validated) as a typed reply.
pub(super) fn to_reply(reply: view::Reply) -> Reply {
    match reply
        .enhanced
        .as_deref()
        .and_then(|e| EnhancedCode::parse_prefix(e).map(|(code, _)| code))
    {
        Some(enhanced) => Reply::new(reply.code, enhanced, reply.text),
        None => Reply::plain(reply.code, reply.text),
    }
}

/// Checks a verdict before the proxy uses it: its reply must fit its kind and the
/// wire (see `portcullis_syntax::reply`).
pub(super) fn validate(verdict: &view::Verdict) -> Result<(), PluginError> {
    let result = match verdict {
        view::Verdict::Reject(reply) => {
            syntax_reply::check_reply(5, reply.code, reply.enhanced.as_deref(), &reply.text)
        }
        view::Verdict::Tempfail(reply) => {
            syntax_reply::check_reply(4, reply.code, reply.enhanced.as_deref(), &reply.text)
        }
        view::Verdict::Disconnect(Some(text)) => syntax_reply::check_text(text),
        _ => Ok(()),
    };
    result.map_err(|violation| PluginError::Invalid(violation.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: Option<&str>, text: &str) -> view::Reply {
        view::Reply {
            code,
            enhanced: enhanced.map(Into::into),
            text: text.into(),
        }
    }

    #[test]
    fn verdicts_are_validated() {
        let cases = [
            (view::Verdict::Reject(reply(550, Some("5.7.1"), "no")), true),
            (view::Verdict::Reject(reply(250, None, "fine")), false),
            (view::Verdict::Reject(reply(450, None, "later")), false),
            (
                view::Verdict::Tempfail(reply(451, Some("4.3.0"), "later")),
                true,
            ),
            (
                view::Verdict::Tempfail(reply(451, Some("5.3.0"), "later")),
                false,
            ),
            (
                view::Verdict::Tempfail(reply(451, Some("4.3"), "later")),
                false,
            ),
            (
                view::Verdict::Reject(reply(550, None, "a\r\nRCPT TO:<x@y.z>")),
                false,
            ),
            (view::Verdict::Disconnect(Some("bye\n".into())), false),
            (view::Verdict::Continue, true),
        ];
        for (verdict, valid) in cases {
            assert_eq!(validate(&verdict).is_ok(), valid, "{verdict:?}");
        }
    }

    fn param(keyword: &str, value: Option<&str>) -> view::Param {
        view::Param {
            keyword: keyword.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn rewrites_follow_the_rules_clients_follow() {
        let mut offered = Capabilities::default();
        offered.insert(Extension::Dsn);
        offered.insert(Extension::Size);
        let rules = PathRules {
            offered: &offered,
            smtputf8: false,
        };
        let notify = [param("NOTIFY", Some("NEVER"))];
        let built = checked_rewrite(Verb::Rcpt, "new@example.com", &notify, &rules).unwrap();
        let Command::Rcpt(rcpt) = built else {
            panic!("a RCPT")
        };
        assert_eq!(rcpt.to_string(), "RCPT TO:<new@example.com> NOTIFY=NEVER");
        let refused: &[(Verb, &str, Vec<view::Param>, &str)] = &[
            (
                Verb::Rcpt,
                "evil@x.example> NOTIFY=NEVER",
                vec![],
                "invalid domain",
            ),
            (
                Verb::Rcpt,
                "x@y.z>\r\nRCPT TO:<victim@example.com",
                vec![],
                "invalid local part",
            ),
            (Verb::Rcpt, "", vec![], "needs a domain"),
            (
                Verb::Rcpt,
                "a@example.com",
                vec![param("NOTIFY", Some("NEVER ORCPT=rfc822;evil@x.example"))],
                "not an esmtp-value",
            ),
            (
                Verb::Rcpt,
                "a@example.com",
                vec![param("X EVIL", None)],
                "not an esmtp-keyword",
            ),
            (
                Verb::Mail,
                "a@example.com",
                vec![param("XEVIL", Some("1"))],
                "not a MAIL parameter",
            ),
            (
                Verb::Mail,
                "a@example.com",
                vec![param("BODY", Some("8BITMIME"))],
                "not offered",
            ),
            (Verb::Mail, "ü@example.com", vec![], "needs SMTPUTF8"),
        ];
        for (verb, address, params, reason) in refused {
            let error = checked_rewrite(*verb, address, params, &rules)
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{address} {params:?}: {error}");
        }
        assert_eq!(checked_helo("renamed.example").unwrap(), "renamed.example");
        assert!(checked_helo("bad name").is_err());
    }
}

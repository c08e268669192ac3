//! The proxy's rules for what a plugin returns, applied by the [`crate::testing`]
//! harness: the same functions the proxy calls (`portcullis_syntax`), so a result the
//! proxy would refuse fails the plugin's own `cargo test` with the rule it breaks.

use portcullis_syntax::{Violation, address, body, header, param, reply};

use crate::{DataOutcome, HeloOutcome, MessageEdit, Param, PathOutcome, Verdict};

/// A verdict's reply fits its kind and the wire.
pub(crate) fn verdict(verdict: &Verdict) -> Result<(), Violation> {
    match verdict {
        Verdict::Reject(r) => reply::check_reply(5, r.code, r.enhanced.as_deref(), &r.text),
        Verdict::Tempfail(r) => reply::check_reply(4, r.code, r.enhanced.as_deref(), &r.text),
        Verdict::Disconnect(Some(text)) => reply::check_text(text),
        _ => Ok(()),
    }
}

pub(crate) fn helo(outcome: &HeloOutcome) -> Result<(), Violation> {
    verdict(&outcome.verdict)?;
    match &outcome.rewrite_name {
        Some(name) => address::check_helo_name(name),
        None => Ok(()),
    }
}

/// A MAIL or RCPT outcome; `params` are the command's own, for a rewrite that keeps
/// them. The harness takes every extension the proxy relays as offered.
pub(crate) fn path(
    verb: param::Verb,
    outcome: &PathOutcome,
    params: &[Param],
) -> Result<(), Violation> {
    verdict(&outcome.verdict)?;
    if let Some(address) = &outcome.rewrite_address {
        match verb {
            param::Verb::Mail => address::check_reverse_path(address)?,
            param::Verb::Rcpt => address::check_forward_path(address)?,
        }
    }
    let params = outcome.rewrite_params.as_deref().unwrap_or(params);
    param::check_params(
        verb,
        params
            .iter()
            .map(|p| (p.keyword.as_str(), p.value.as_deref())),
    )
}

pub(crate) fn data(outcome: &DataOutcome) -> Result<(), Violation> {
    verdict(&outcome.verdict)?;
    outcome.edits.iter().try_for_each(edit)
}

fn edit(edit: &MessageEdit) -> Result<(), Violation> {
    match edit {
        MessageEdit::AddHeader { name, value } | MessageEdit::InsertHeader { name, value, .. } => {
            header::check_field(name, value)
        }
        MessageEdit::ChangeHeader { name, value, .. } => match value {
            Some(value) => header::check_field(name, value),
            None => header::check_name(name),
        },
        MessageEdit::RemoveHeader { name } => header::check_name(name),
        MessageEdit::ReplaceBody { body: text }
        | MessageEdit::AppendBody { text }
        | MessageEdit::PrependBody { text } => body::normalize(text).map(drop),
        MessageEdit::AddRecipient { address } => address::check_forward_path(address),
        MessageEdit::RemoveRecipient { .. } => Ok(()),
        MessageEdit::Quarantine { reason } => body::check_text("quarantine reason", reason),
    }
}

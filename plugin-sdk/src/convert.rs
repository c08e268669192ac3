//! Conversions between the generated WIT types and the SDK's own types.

use crate::{
    __runtime::wit,
    types::{
        DataOutcome, HeloOutcome, MessageEdit, Param, PathOutcome, Reply, SessionInfo, Verdict,
    },
};

impl From<wit::Session> for SessionInfo {
    fn from(s: wit::Session) -> Self {
        SessionInfo {
            id: s.id,
            listener: s.listener,
            client_ip: s.client_ip,
            client_port: s.client_port,
            helo: s.helo,
            tls: s.tls,
            login: s.login,
        }
    }
}

pub fn params(params: Vec<wit::Param>) -> Vec<Param> {
    params
        .into_iter()
        .map(|p| Param {
            keyword: p.keyword,
            value: p.value,
        })
        .collect()
}

fn wit_params(params: Vec<Param>) -> Vec<wit::Param> {
    params
        .into_iter()
        .map(|p| wit::Param {
            keyword: p.keyword,
            value: p.value,
        })
        .collect()
}

fn reply(reply: Reply) -> wit::Reply {
    wit::Reply {
        code: reply.code,
        enhanced: reply.enhanced,
        text: reply.text,
    }
}

pub fn verdict(verdict: Verdict) -> wit::Verdict {
    match verdict {
        Verdict::Continue => wit::Verdict::Continue,
        Verdict::Accept => wit::Verdict::Accept,
        Verdict::Reject(r) => wit::Verdict::Reject(reply(r)),
        Verdict::Tempfail(r) => wit::Verdict::Tempfail(reply(r)),
        Verdict::Discard => wit::Verdict::Discard,
        Verdict::Disconnect(text) => wit::Verdict::Disconnect(text),
    }
}

pub fn helo_outcome(outcome: HeloOutcome) -> wit::HeloOutcome {
    wit::HeloOutcome {
        verdict: verdict(outcome.verdict),
        rewrite_name: outcome.rewrite_name,
    }
}

pub fn path_outcome(outcome: PathOutcome) -> wit::PathOutcome {
    let rewrite =
        (outcome.rewrite_address.is_some() || outcome.rewrite_params.is_some()).then(|| {
            wit::PathRewrite {
                address: outcome.rewrite_address,
                params: outcome.rewrite_params.map(wit_params),
            }
        });
    wit::PathOutcome {
        verdict: verdict(outcome.verdict),
        rewrite,
    }
}

pub fn data_outcome(outcome: DataOutcome) -> wit::DataOutcome {
    let edits = outcome.edits.into_iter().map(edit).collect();
    wit::DataOutcome {
        verdict: verdict(outcome.verdict),
        edits,
    }
}

fn edit(edit: MessageEdit) -> wit::MessageEdit {
    match edit {
        MessageEdit::AddHeader { name, value } => {
            wit::MessageEdit::AddHeader(wit::Header { name, value })
        }
        MessageEdit::InsertHeader { index, name, value } => {
            wit::MessageEdit::InsertHeader(wit::HeaderAt { index, name, value })
        }
        MessageEdit::ChangeHeader { name, index, value } => {
            wit::MessageEdit::ChangeHeader(wit::HeaderChange { name, index, value })
        }
        MessageEdit::RemoveHeader { name } => wit::MessageEdit::RemoveHeader(name),
        MessageEdit::ReplaceBody { body } => wit::MessageEdit::ReplaceBody(body),
        MessageEdit::AppendBody { text } => wit::MessageEdit::AppendBody(text),
        MessageEdit::PrependBody { text } => wit::MessageEdit::PrependBody(text),
        MessageEdit::AddRecipient { address } => wit::MessageEdit::AddRecipient(address),
        MessageEdit::RemoveRecipient { address } => wit::MessageEdit::RemoveRecipient(address),
        MessageEdit::Quarantine { reason } => wit::MessageEdit::Quarantine(reason),
    }
}

//! The envelope the RCPT and DATA hooks see, fetched from the proxy only when read.

use std::{cell::OnceCell, fmt, rc::Rc};

use crate::{__runtime::wit, Param, convert};

/// The envelope so far: the sender, the MAIL parameters and the accepted recipients.
///
/// In the proxy, a hook receives only a reference to it: the sender and recipients
/// are copied into the plugin the first time one of them is read, and kept for the
/// session, so later hooks fetch only the recipients added since. A plugin that reads
/// nothing, or only [`Envelope::recipient_count`], pays nothing for the envelope.
/// In tests it is built with [`Envelope::new`].
#[derive(Default)]
pub struct Envelope {
    recipient_count: usize,
    /// Where the parts come from when first read: `None` when built in memory.
    host_version: Option<u32>,
    parts: OnceCell<Rc<Parts>>,
}

/// The envelope's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Parts {
    sender: String,
    mail_params: Vec<Param>,
    recipients: Vec<String>,
}

impl Envelope {
    /// An envelope held in memory (for tests).
    pub fn new(
        sender: impl Into<String>,
        mail_params: Vec<Param>,
        recipients: Vec<String>,
    ) -> Self {
        Envelope {
            recipient_count: recipients.len(),
            host_version: None,
            parts: OnceCell::from(Rc::new(Parts {
                sender: sender.into(),
                mail_params,
                recipients,
            })),
        }
    }

    /// The proxy's envelope as a hook's argument names it; read on demand.
    pub(crate) fn from_host(envelope: wit::EnvelopeRef) -> Self {
        Envelope {
            recipient_count: envelope.recipients as usize,
            host_version: Some(envelope.version),
            parts: OnceCell::new(),
        }
    }

    /// The reverse-path without brackets; empty for the null path.
    pub fn sender(&self) -> &str {
        &self.parts().sender
    }

    /// The MAIL parameters.
    pub fn mail_params(&self) -> &[Param] {
        &self.parts().mail_params
    }

    /// The accepted recipients, without brackets.
    pub fn recipients(&self) -> &[String] {
        &self.parts().recipients
    }

    /// How many recipients were accepted so far; never asks the proxy.
    pub fn recipient_count(&self) -> usize {
        self.recipient_count
    }

    /// Adds a recipient at the end (the test harness's accepted RCPT).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn push_recipient(&mut self, recipient: String) {
        self.parts();
        let parts = self.parts.get_mut().expect("just read");
        Rc::make_mut(parts).recipients.push(recipient);
        self.recipient_count += 1;
    }

    fn parts(&self) -> &Parts {
        self.parts.get_or_init(|| match self.host_version {
            Some(version) => host_parts(version, self.recipient_count),
            None => Rc::default(),
        })
    }
}

thread_local! {
    /// The envelope as last fetched from the proxy, with its version.
    static FETCHED: std::cell::RefCell<Option<(u32, Rc<Parts>)>> =
        const { std::cell::RefCell::new(None) };
}

/// The parts of the proxy's envelope `version` with `recipient_count` recipients: from
/// the last fetch, asking the proxy only for what changed since.
fn host_parts(version: u32, recipient_count: usize) -> Rc<Parts> {
    FETCHED.with(|cell| {
        let mut fetched = cell.borrow_mut();
        match fetched.as_mut() {
            Some((known, parts))
                if *known == version && parts.recipients.len() <= recipient_count =>
            {
                let have = parts.recipients.len();
                if have < recipient_count {
                    let index = u32::try_from(have).unwrap_or(u32::MAX);
                    let added =
                        crate::bindings::portcullis::plugin::context::recipients_from(index);
                    Rc::make_mut(parts).recipients.extend(added);
                }
            }
            _ => {
                let envelope = crate::bindings::portcullis::plugin::context::current_envelope();
                let parts = Parts {
                    sender: envelope.sender,
                    mail_params: convert::params(envelope.mail_params),
                    recipients: envelope.recipients,
                };
                *fetched = Some((version, Rc::new(parts)));
            }
        }
        Rc::clone(&fetched.as_ref().expect("just fetched").1)
    })
}

/// A clone reads the envelope first, so it stays valid after the hook returns.
impl Clone for Envelope {
    fn clone(&self) -> Self {
        self.parts();
        Envelope {
            recipient_count: self.recipient_count,
            host_version: None,
            parts: self.parts.clone(),
        }
    }
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for Envelope {}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("sender", &self.sender())
            .field("mail_params", &self.mail_params())
            .field("recipients", &self.recipients())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_in_memory_reads_back_what_it_was_built_with() {
        let mut envelope = Envelope::new("a@example.org", Vec::new(), vec!["b@example.com".into()]);
        assert_eq!(envelope.sender(), "a@example.org");
        assert_eq!(envelope.recipient_count(), 1);
        envelope.push_recipient("c@example.com".into());
        assert_eq!(envelope.recipients(), ["b@example.com", "c@example.com"]);
        assert_eq!(envelope.recipient_count(), 2);
        assert_eq!(envelope.clone(), envelope);
        assert_eq!(Envelope::default().sender(), "");
    }
}

//! The SMTP protocol as data: command parsing, replies, line splitting and the DATA
//! transparency rules. Nothing here does I/O or makes policy decisions; the session
//! and upstream modules drive these pieces over sockets.

pub mod capabilities;
pub mod command;
pub mod data;
pub mod line;
mod mechanism;
pub(crate) mod replies;
pub mod reply;
pub(crate) mod trace;

pub use command::{Command, CommandError, MailCommand, Param, Path, RcptCommand};
pub use mechanism::Mechanism;
pub use reply::{EnhancedCode, Reply};

//! `[client_limits]`, globally and per listener: what one client (an address, or a
//! network of addresses) may hold.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, validate::LineOf};

/// `[client_limits]`: what one client address may hold, checked when a connection is
/// accepted, before any plugin runs; past a limit: 421 4.7.0 and close.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimitsConfig {
    /// Sessions one address may have open at once (Postfix's
    /// `smtpd_client_connection_count_limit`, 50); 0: no limit.
    pub max_sessions: usize,
    /// New sessions one address may open per `window`, refused attempts included
    /// (Postfix's `smtpd_client_connection_rate_limit`); 0: no limit, the default.
    pub max_new_sessions: usize,
    /// The window `max_new_sessions` counts in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// IPv4 clients are counted by network of this prefix length: 32 counts each
    /// address, 24 each /24 (many hosts of one network count as one client).
    pub ipv4_prefix: u8,
    /// The same for IPv6: 64 by default, since one site or subscriber commonly holds
    /// a whole /64 and could otherwise open each session from another address.
    pub ipv6_prefix: u8,
}

impl Default for ClientLimitsConfig {
    fn default() -> Self {
        Self {
            max_sessions: 50,
            max_new_sessions: 0,
            window: Duration::from_secs(60),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// Checks a `[client_limits]` table at `key`: a rate needs a window, and prefix
/// lengths fit their families.
pub(super) fn validate(
    raw: Option<Spanned<ClientLimitsConfig>>,
    key: &str,
    line_of: LineOf,
) -> Result<Option<ClientLimitsConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let offset = raw.span().start;
    let limits = raw.into_inner();
    let error = |field: &str, message: &str| ConfigError {
        key: format!("{key}.{field}"),
        line: Some(line_of(offset)),
        message: message.into(),
    };
    if limits.max_new_sessions > 0 && limits.window.is_zero() {
        return Err(error(
            "window",
            "must be longer than 0s when max_new_sessions is set",
        ));
    }
    if !(8..=32).contains(&limits.ipv4_prefix) {
        return Err(error("ipv4_prefix", "must be from 8 to 32"));
    }
    if !(16..=128).contains(&limits.ipv6_prefix) {
        return Err(error("ipv6_prefix", "must be from 16 to 128"));
    }
    Ok(Some(limits))
}

//! Checks on single values while deserializing, so a bad number is reported with
//! its key and line by serde itself.

use serde::{Deserialize, Deserializer};

pub(super) fn at_least<'de, D: Deserializer<'de>>(
    deserializer: D,
    minimum: usize,
    why: &str,
) -> Result<usize, D::Error> {
    let value = usize::deserialize(deserializer)?;
    if value < minimum {
        return Err(serde::de::Error::custom(format!(
            "must be at least {minimum} ({why})"
        )));
    }
    Ok(value)
}

pub(super) fn at_least_512<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    at_least(deserializer, 512, "RFC 5321 §4.5.3.1.4")
}

pub(super) fn at_least_1000<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    at_least(deserializer, 1000, "RFC 5321 §4.5.3.1.6")
}

pub(super) fn positive_usize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<usize, D::Error> {
    at_least(deserializer, 1, "zero would refuse everything")
}

pub(super) fn positive_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

pub(super) fn positive_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

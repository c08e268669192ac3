//! The plugin's configuration: its `config` table from the proxy's TOML file, read
//! into a type of the plugin's own with [`Config::parse`].

use std::{fmt, ops::Deref, str::FromStr};

use serde::de::DeserializeOwned;

/// The plugin's own configuration: its `[plugins.NAME] config` table. Read it into a
/// type of your own with [`Config::parse`]; single values are at hand through the TOML
/// table it derefs to (`config.get("limit")`).
///
/// ```
/// use portcullis_sdk::Config;
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Settings {
///     domains: Vec<String>,
///     #[serde(default)]
///     max_recipients: Option<u32>,
/// }
///
/// let config: Config = "domains = [\"example.com\"]".parse().unwrap();
/// let settings: Settings = config.parse().unwrap();
/// assert_eq!(settings.domains, ["example.com"]);
///
/// let typo: Config = "domainz = [\"example.com\"]".parse().unwrap();
/// let error = typo.parse::<Settings>().err().unwrap();
/// assert!(error.contains("unknown field `domainz`"), "{error}");
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct Config {
    table: toml::Table,
    text: String,
}

impl Config {
    /// The table read into `T`. Unknown keys (with `#[serde(deny_unknown_fields)]`),
    /// missing keys and wrong types are errors that name the key: return them from
    /// `init`, and `portcullis check` reports them with the plugin's name.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        toml::from_str(&self.text).map_err(|error| {
            // The line the error is on names the key (`domains = 3`).
            let at = error.span().map(|span| {
                let start = self.text[..span.start].rfind('\n').map_or(0, |i| i + 1);
                let end = self.text[start..]
                    .find('\n')
                    .map_or(self.text.len(), |i| start + i);
                self.text[start..end].trim()
            });
            match at.filter(|line| !line.is_empty()) {
                Some(line) => format!("{} (at `{line}`)", error.message().trim()),
                None => error.message().trim().to_string(),
            }
        })
    }

    /// The TOML table.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }
}

impl Deref for Config {
    type Target = toml::Table;

    fn deref(&self) -> &toml::Table {
        &self.table
    }
}

impl FromStr for Config {
    type Err = toml::de::Error;

    /// A configuration from the body of its TOML table (`limit = 3`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Config {
            table: text.parse()?,
            text: text.to_string(),
        })
    }
}

impl From<toml::Table> for Config {
    fn from(table: toml::Table) -> Self {
        Config {
            text: table.to_string(),
            table,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table.fmt(f)
    }
}

/// The list of strings at `key` of a configuration table; empty if the key is absent,
/// an error naming the key if it is not a list of strings. [`Config::parse`] into a
/// type of your own does this for every key at once.
pub fn config_strings(config: &toml::Table, key: &str) -> Result<Vec<String>, String> {
    let Some(value) = config.get(key) else {
        return Ok(Vec::new());
    };
    let invalid = || format!("{key} must be a list of strings");
    value
        .as_array()
        .ok_or_else(invalid)?
        .iter()
        .map(|item| item.as_str().map(str::to_string).ok_or_else(invalid))
        .collect()
}

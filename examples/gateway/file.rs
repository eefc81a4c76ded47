//! The gateway's config file (TOML). Each key has an environment variable, which wins over the
//! file, so a container can keep one file and change a value per deployment.
//!
//! ```toml
//! listen = "0.0.0.0:8080"            # GATEWAY_ADDR
//! [deepseek]
//! model = "deepseek-v4-flash"        # DEEPSEEK_MODEL
//! [breaker]
//! failure_rate = 50                  # GATEWAY_BREAKER_FAILURE_RATE
//! ```
//!
//! The whole list is [`SETTINGS`]. The DeepSeek key is never read from the file: it comes from
//! `DEEPSEEK_API_KEY` (a Kubernetes Secret, say), so a config file can be shared and committed.
//! An unknown table or key is an error (a misspelt key would otherwise be ignored silently).

use std::collections::HashMap;

use tower_deepseek::failover::{Endpoint, UnmappedModel};
use tower_deepseek::{Error, ErrorKind};

/// Every setting: its environment variable, its table in the file (`""`: the top level) and its
/// key there.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("GATEWAY_ADDR", "", "listen"),
    ("GATEWAY_ADMIN_ADDR", "", "admin_listen"),
    ("GATEWAY_BARE", "", "bare"),
    ("DEEPSEEK_BASE_URL", "deepseek", "base_url"),
    ("DEEPSEEK_MODEL", "deepseek", "model"),
    ("GATEWAY_FALLBACK_MODEL", "deepseek", "fallback_model"),
    ("GATEWAY_REQUIRE_API_KEY", "deepseek", "require_api_key"),
    ("GATEWAY_UPSTREAM_HTTP2_ONLY", "deepseek", "http2_only"),
    ("GATEWAY_BREAKER_FAILURE_RATE", "breaker", "failure_rate"),
    ("GATEWAY_BREAKER_MINIMUM_CALLS", "breaker", "minimum_calls"),
    ("GATEWAY_BREAKER_WINDOW", "breaker", "window"),
    ("GATEWAY_BREAKER_OPEN_WAIT", "breaker", "open_wait"),
    ("GATEWAY_BREAKER_FATAL_WAIT", "breaker", "fatal_wait"),
    ("GATEWAY_RETRY_MAX_ATTEMPTS", "retry", "max_attempts"),
    ("GATEWAY_HEADERS_TIMEOUT", "timeouts", "headers"),
    ("GATEWAY_FIRST_TOKEN_TIMEOUT", "timeouts", "first_token"),
    ("GATEWAY_IDLE_TIMEOUT", "timeouts", "idle"),
    ("GATEWAY_RATE_LIMIT_PER_MINUTE", "rate_limit", "per_minute"),
    ("GATEWAY_RATE_LIMIT_BURST", "rate_limit", "burst"),
    ("REDIS_URL", "rate_limit", "redis_url"),
    ("GATEWAY_MAX_IN_FLIGHT", "concurrency", "max_in_flight"),
    ("GATEWAY_JOBS_MAX", "jobs", "max_jobs"),
    ("GATEWAY_JOBS_WORKERS", "jobs", "workers"),
    ("GATEWAY_JOBS_MAX_AGE", "jobs", "max_age"),
    ("GATEWAY_HEDGE", "hedge", "enabled"),
    ("GATEWAY_HEDGE_PERCENTILE", "hedge", "percentile"),
    (
        "GATEWAY_HEDGE_MAX_EXTRA_PERCENT",
        "hedge",
        "max_extra_percent",
    ),
];

/// One value and where it came from, for error messages.
#[derive(Clone, Debug)]
pub struct Setting {
    /// The value as text (a number or a boolean from the file is written out).
    pub value: String,
    /// The environment variable, or the key and the file it is in.
    pub origin: String,
}

/// One failover upstream from the file's `[[upstreams]]` (checked when the stack is built).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpstreamEntry {
    /// Its name: the `x-upstream` header and the metrics label.
    pub name: String,
    /// Its OpenAI-compatible base URL.
    pub base_url: String,
    /// The environment variable holding its key (keys never sit in the file).
    pub api_key_env: String,
    /// The key, read from `api_key_env` when the settings are read (or set directly).
    pub api_key: Option<SecretKey>,
    /// DeepSeek model name → this upstream's model name.
    pub models: Vec<(String, String)>,
}

/// An upstream's API key: `Debug` never shows it.
#[derive(Clone, PartialEq)]
pub struct SecretKey(pub String);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// The settings of a config file, by environment variable name.
#[derive(Clone, Debug, Default)]
pub struct ConfigFile {
    values: HashMap<&'static str, Setting>,
    /// The `[[upstreams]]` list, in order.
    pub upstreams: Vec<UpstreamEntry>,
}

fn file_error(path: &str, message: String) -> Error {
    Error::new(ErrorKind::Config, format!("{path}: {message}"))
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    pub fn read(path: &str) -> Result<ConfigFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("GATEWAY_CONFIG={path:?} cannot be read: {e}"),
            )
        })?;
        ConfigFile::parse(path, &text)
    }

    /// Parses `text` (named `path` in errors).
    pub fn parse(path: &str, text: &str) -> Result<ConfigFile, Error> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_error(path, format!("not valid TOML: {e}")))?;
        let mut file = ConfigFile::default();
        for (key, value) in &table {
            match value {
                toml::Value::Table(inner) => file.table(path, key, inner)?,
                toml::Value::Array(entries) if key == "upstreams" => {
                    for (index, entry) in entries.iter().enumerate() {
                        file.upstreams.push(upstream(path, index, entry)?);
                    }
                }
                scalar => file.scalar(path, "", key, scalar)?,
            }
        }
        Ok(file)
    }

    fn table(&mut self, path: &str, name: &str, table: &toml::Table) -> Result<(), Error> {
        if !SETTINGS.iter().any(|(_, t, _)| *t == name) {
            return Err(file_error(path, format!("unknown table [{name}]")));
        }
        for (key, value) in table {
            if name == "deepseek" && key == "api_key" {
                return Err(file_error(
                    path,
                    "[deepseek] api_key: the key is never read from the file; set DEEPSEEK_API_KEY"
                        .to_owned(),
                ));
            }
            self.scalar(path, name, key, value)?;
        }
        Ok(())
    }

    fn scalar(
        &mut self,
        path: &str,
        table: &str,
        key: &str,
        value: &toml::Value,
    ) -> Result<(), Error> {
        let shown = if table.is_empty() {
            format!("`{key}`")
        } else {
            format!("`[{table}] {key}`")
        };
        let Some((env, _, _)) = SETTINGS.iter().find(|(_, t, k)| *t == table && *k == key) else {
            return Err(file_error(path, format!("unknown key {shown}")));
        };
        let value = match value {
            toml::Value::String(text) => text.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(file_error(
                    path,
                    format!("{shown} must be a string, a number or a boolean"),
                ));
            }
        };
        self.values.insert(
            env,
            Setting {
                value,
                origin: format!("{shown} in {path}"),
            },
        );
        Ok(())
    }

    /// The file's value for the setting with environment variable `env`.
    pub fn get(&self, env: &str) -> Option<&Setting> {
        self.values.get(env)
    }
}

impl UpstreamEntry {
    /// Reads the key from `api_key_env` through `lookup`; a missing one is an error naming
    /// the variable (never a value).
    pub fn resolve_key(&mut self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), Error> {
        match lookup(&self.api_key_env).filter(|key| !key.trim().is_empty()) {
            Some(key) => {
                self.api_key = Some(SecretKey(key.trim().to_owned()));
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the upstream {:?} takes its key from {}, which is not set",
                    self.name, self.api_key_env
                ),
            )),
        }
    }

    /// The failover endpoint. Without a `models` table names go unchanged; with one, a model
    /// it does not map skips this upstream.
    pub fn endpoint(&self) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::new(&self.name, &self.base_url).models(self.models.clone());
        let endpoint = if self.models.is_empty() {
            endpoint.unmapped_models(UnmappedModel::SendUnchanged)
        } else {
            endpoint
        };
        Ok(match &self.api_key {
            Some(key) => endpoint.api_key(key.0.as_str()),
            None => endpoint,
        })
    }
}

fn upstream(path: &str, index: usize, entry: &toml::Value) -> Result<UpstreamEntry, Error> {
    let at = |message: String| file_error(path, format!("[[upstreams]] #{}: {message}", index + 1));
    let toml::Value::Table(table) = entry else {
        return Err(at("must be a table".to_owned()));
    };
    let mut parsed = UpstreamEntry::default();
    for (key, value) in table {
        match (key.as_str(), value) {
            ("name", toml::Value::String(v)) => parsed.name = v.clone(),
            ("base_url", toml::Value::String(v)) => parsed.base_url = v.clone(),
            ("api_key_env", toml::Value::String(v)) => parsed.api_key_env = v.clone(),
            ("models", toml::Value::Table(models)) => {
                for (from, to) in models {
                    let toml::Value::String(to) = to else {
                        return Err(at(format!("models.{from} must be a model name")));
                    };
                    parsed.models.push((from.clone(), to.clone()));
                }
            }
            ("api_key", _) => {
                return Err(at(
                    "api_key: keys are never read from the file; name the variable holding it in api_key_env"
                        .to_owned(),
                ));
            }
            ("name" | "base_url" | "api_key_env", _) => {
                return Err(at(format!("{key} must be a string")));
            }
            ("models", _) => return Err(at("models must be a table".to_owned())),
            _ => return Err(at(format!("unknown key `{key}`"))),
        }
    }
    for (key, value) in [
        ("name", &parsed.name),
        ("base_url", &parsed.base_url),
        ("api_key_env", &parsed.api_key_env),
    ] {
        if value.trim().is_empty() {
            return Err(at(format!("{key} is required")));
        }
    }
    Ok(parsed)
}

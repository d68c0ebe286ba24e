//! Daemon configuration: layered loading, validation and masked rendering.
//!
//! Layers, last wins:
//! 1. `config/default.toml`, compiled into the binary with `include_str!` so `mcpd` runs from
//!    any directory and the defaults have exactly one home;
//! 2. an optional file given with `mcpd --config FILE`;
//! 3. environment variables `MCPD__SECTION__KEY` (double underscore between levels), e.g.
//!    `MCPD__BROKER__BACKEND=redis` or `MCPD__STORE__MONGODB__URI=mongodb://…`.
//!
//! Every struct denies unknown fields, so a typo is an error instead of a silently ignored
//! setting. Every problem is reported as one [`ConfigError`] whose `Display` is a single line
//! naming the offending key. Loading never touches the disk beyond reading the extra file:
//! directories are created by the daemon only after validation succeeded.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// The built-in defaults, `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides (`MCPD__SECTION__KEY`).
pub const ENV_PREFIX: &str = "MCPD";

/// Separator between the prefix, sections and keys of an environment override.
pub const ENV_SEPARATOR: &str = "__";

/// What replaces a password in [`Config::masked_toml`] and in logs.
pub const MASK: &str = "****";

/// The whole effective configuration of one mcpd process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and shutdown.
    pub server: ServerConfig,
    /// The source of truth.
    pub store: StoreConfig,
    /// The fast path (queues, leases, locks).
    pub broker: BrokerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Scheduler timings.
    pub scheduler: SchedulerConfig,
    /// How long finished data is kept.
    pub retention: RetentionConfig,
}

/// `[server]`: listeners and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP listener (REST, WebSocket, metrics, health).
    #[serde(deserialize_with = "socket_addr")]
    pub http_addr: SocketAddr,
    /// TCP listener for the framed agent protocol.
    #[serde(deserialize_with = "socket_addr")]
    pub tcp_addr: SocketAddr,
    /// Upper bound on draining in-flight work after SIGTERM/SIGINT.
    pub shutdown_timeout_seconds: u64,
}

/// `[store]`: where the source of truth lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Which store implementation to use.
    pub backend: StoreBackend,
    /// Directory for the embedded store and other local state.
    pub data_dir: PathBuf,
    /// SQLite `PRAGMA synchronous` of the embedded store.
    pub sqlite_synchronous: SqliteSynchronous,
    /// MongoDB settings, used when `backend = "mongodb"`.
    pub mongodb: MongoConfig,
}

/// `[store.mongodb]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string; required when the MongoDB backend is selected. May hold a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Database holding mcpd's collections.
    pub database: String,
}

/// `[broker]`: the fast path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Which broker implementation to use.
    pub backend: BrokerBackend,
    /// Redis settings, used when `backend = "redis"`.
    pub redis: RedisConfig,
}

/// `[broker.redis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL. May hold a password.
    pub url: String,
    /// Prefix of every key mcpd writes.
    pub key_prefix: String,
    /// Maximum pooled connections.
    pub pool_size: usize,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing_subscriber::EnvFilter` directives; `RUST_LOG` takes precedence.
    pub level: String,
    /// Line format on stderr.
    pub format: LogFormat,
}

/// `[scheduler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Lifetime of a task lease before it must be renewed.
    pub lease_ttl_seconds: u64,
    /// Silence after which an agent is expired and its tasks requeued.
    pub heartbeat_timeout_seconds: u64,
    /// This instance's name in locks, events and logs; empty means `{hostname}-{pid}`.
    #[serde(default)]
    pub instance_id: String,
    /// How often lapsed leases and silent agents are looked for.
    pub reaper_interval_seconds: u64,
    /// Lifetime of the lock through which one instance coordinates a pipeline; a dead
    /// instance's pipelines are taken over within it.
    pub pipeline_lock_ttl_seconds: u64,
    /// How often a coordinator re-reads its pipeline to see results that reached other instances.
    pub resync_interval_ms: u64,
    /// Longest an agent's fetch may wait for work.
    pub fetch_max_wait_seconds: u64,
    /// Length of a metrics aggregation window.
    pub metrics_window_seconds: u64,
}

/// `[retention]`: days to keep each collection's finished records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events.
    pub events_days: u32,
    /// Finished tasks.
    pub tasks_days: u32,
    /// Finished pipelines.
    pub pipelines_days: u32,
    /// Audit log records.
    pub audit_logs_days: u32,
    /// Aggregated metrics.
    pub metrics_days: u32,
}

/// Declares a closed set of lowercase string values, deserialized with a one-line error that
/// lists the accepted values (serde's derive would say "unknown variant", which operators do not
/// speak).
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $noun:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The value as written in the configuration.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> Self {
                value.as_str()
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                match value.as_str() {
                    $($text => Ok(Self::$variant),)+
                    _ => {
                        let expected = [$(concat!("\"", $text, "\"")),+];
                        Err(format!(
                            "unknown {} {:?} (expected {})",
                            $noun,
                            value,
                            join_alternatives(&expected)
                        ))
                    }
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// `store.backend`.
    StoreBackend, "backend", {
        /// SQLite file in `store.data_dir`.
        Embedded => "embedded",
        /// MongoDB at `store.mongodb.uri`.
        Mongodb => "mongodb",
    }
);

string_enum!(
    /// `broker.backend`.
    BrokerBackend, "backend", {
        /// In-process structures; one instance only.
        Memory => "memory",
        /// Redis at `broker.redis.url`.
        Redis => "redis",
    }
);

string_enum!(
    /// `store.sqlite_synchronous`.
    SqliteSynchronous, "value", {
        /// `PRAGMA synchronous = NORMAL`.
        Normal => "normal",
        /// `PRAGMA synchronous = FULL`.
        Full => "full",
    }
);

string_enum!(
    /// `log.format`.
    LogFormat, "format", {
        /// Human-readable lines.
        Text => "text",
        /// One JSON object per line.
        Json => "json",
    }
);

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn join_alternatives(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid socket address {text:?} (expected IP:PORT, e.g. 127.0.0.1:7400)"
        ))
    })
}

/// A configuration that could not be loaded. `Display` is one line naming the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A key holds a missing, malformed or out-of-range value, or is not a known key.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `broker.backend`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration file could not be read or parsed.
    #[error("invalid config: {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why it could not be used.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The dotted key this error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::File { .. } => None,
        }
    }
}

impl Config {
    /// Loads defaults, then `extra_file`, then `MCPD__…` variables from the process environment.
    pub fn load(extra_file: Option<&Path>) -> Result<Self, ConfigError> {
        // `vars()` would panic on a non-UTF-8 variable anywhere in the environment; such a
        // variable cannot be one of ours, so skip it.
        let env = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)));
        Self::load_from(extra_file, env)
    }

    /// Like [`Config::load`], but reads overrides from `env` instead of the process environment,
    /// so tests running in parallel need not mutate shared state. Entries without the `MCPD__`
    /// prefix are ignored.
    pub fn load_from(
        extra_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = extra_file {
            // Read it ourselves: the `config` crate's error for a missing file does not name the
            // path consistently, and its parse errors span several lines.
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
                path: path.to_owned(),
                message: err.to_string(),
            })?;
            let parsed = config::File::from_str(&text, config::FileFormat::Toml);
            // Parse eagerly to attribute syntax errors to the file rather than to a key.
            config::Config::builder()
                .add_source(parsed.clone())
                .build()
                .map_err(|err| ConfigError::File {
                    path: path.to_owned(),
                    message: one_line(&err.to_string()),
                })?;
            builder = builder.add_source(parsed);
        }
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(Some(env)),
        );
        let merged = builder.build().map_err(from_config_error)?;
        let config: Config = merged.try_deserialize().map_err(from_config_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot: positive durations and sizes, a MongoDB URI when the
    /// MongoDB store is selected, a parsable log filter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "server.shutdown_timeout_seconds",
                self.server.shutdown_timeout_seconds,
            ),
            ("broker.redis.pool_size", self.broker.redis.pool_size as u64),
            (
                "scheduler.lease_ttl_seconds",
                self.scheduler.lease_ttl_seconds,
            ),
            (
                "scheduler.heartbeat_timeout_seconds",
                self.scheduler.heartbeat_timeout_seconds,
            ),
            (
                "scheduler.reaper_interval_seconds",
                self.scheduler.reaper_interval_seconds,
            ),
            (
                "scheduler.pipeline_lock_ttl_seconds",
                self.scheduler.pipeline_lock_ttl_seconds,
            ),
            (
                "scheduler.resync_interval_ms",
                self.scheduler.resync_interval_ms,
            ),
            (
                "scheduler.fetch_max_wait_seconds",
                self.scheduler.fetch_max_wait_seconds,
            ),
            (
                "scheduler.metrics_window_seconds",
                self.scheduler.metrics_window_seconds,
            ),
            ("retention.events_days", self.retention.events_days.into()),
            ("retention.tasks_days", self.retention.tasks_days.into()),
            (
                "retention.pipelines_days",
                self.retention.pipelines_days.into(),
            ),
            (
                "retention.audit_logs_days",
                self.retention.audit_logs_days.into(),
            ),
            ("retention.metrics_days", self.retention.metrics_days.into()),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.store.backend == StoreBackend::Mongodb
            && self.store.mongodb.uri.as_deref().is_none_or(str::is_empty)
        {
            return Err(ConfigError::invalid(
                "store.mongodb.uri",
                "required when store.backend = \"mongodb\"",
            ));
        }
        if let Some(uri) = &self.store.mongodb.uri {
            if !uri.is_empty()
                && !uri.starts_with("mongodb://")
                && !uri.starts_with("mongodb+srv://")
            {
                return Err(ConfigError::invalid(
                    "store.mongodb.uri",
                    "must start with \"mongodb://\" or \"mongodb+srv://\"",
                ));
            }
        }
        if self.store.mongodb.database.is_empty() {
            return Err(ConfigError::invalid(
                "store.mongodb.database",
                "must not be empty",
            ));
        }
        let url = &self.broker.redis.url;
        if !["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(ConfigError::invalid(
                "broker.redis.url",
                format!(
                    "invalid Redis URL {:?} (expected redis://HOST:PORT)",
                    mask_url(url)
                ),
            ));
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("store.data_dir", "must not be empty"));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "invalid filter {:?}: {}",
                    self.log.level,
                    one_line(&err.to_string())
                ),
            ));
        }
        Ok(())
    }

    /// A copy with every password in a connection string replaced by [`MASK`].
    pub fn masked(&self) -> Self {
        let mut masked = self.clone();
        masked.store.mongodb.uri = masked.store.mongodb.uri.as_deref().map(mask_url);
        masked.broker.redis.url = mask_url(&masked.broker.redis.url);
        masked
    }

    /// The effective configuration as TOML, passwords masked; what `mcpd check-config` prints.
    pub fn masked_toml(&self) -> String {
        toml::to_string(&self.masked()).expect("the configuration is always representable as TOML")
    }
}

/// Replaces the password in the userinfo of `scheme://user:password@host…` with [`MASK`].
///
/// A URL without a password is returned unchanged. The userinfo ends at the *last* `@` of the
/// authority, because drivers accept a raw `@` inside passwords more often than they should.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}{}{}",
        &url[..authority_start],
        &userinfo[..=colon],
        MASK,
        &url[authority_start + at..]
    )
}

/// Collapses a possibly multi-line message (TOML parse errors span several) into one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|') && !line.contains(" | "))
        .collect();
    match lines.as_slice() {
        [] => message.trim().to_owned(),
        [one] => (*one).to_owned(),
        [first, .., last] => format!("{first}: {last}"),
    }
}

/// Maps the `config` crate's error (which carries the dotted key) to ours.
fn from_config_error(err: config::ConfigError) -> ConfigError {
    use config::ConfigError as E;
    match err {
        E::At { error, key, .. } => {
            let key = key.unwrap_or_default();
            let message = one_line(&inner_message(*error));
            // serde reports an unknown field at the enclosing struct; name the field itself.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                let full = if key.is_empty() {
                    field.to_owned()
                } else {
                    format!("{key}.{field}")
                };
                return ConfigError::invalid(full, "unknown key");
            }
            ConfigError::invalid(key, message)
        }
        E::Type {
            key,
            unexpected,
            expected,
            ..
        } => ConfigError::invalid(
            key.unwrap_or_default(),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        E::NotFound(key) => ConfigError::invalid(key, "missing"),
        E::Message(message) => {
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                return ConfigError::invalid(field, "unknown key");
            }
            ConfigError::invalid("<root>", one_line(&message))
        }
        other => ConfigError::invalid("<root>", one_line(&other.to_string())),
    }
}

/// The message of an error nested in `At`, without the key/origin suffix the crate appends.
fn inner_message(err: config::ConfigError) -> String {
    match err {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        config::ConfigError::At { error, .. } => inner_message(*error),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(None, env(pairs))
    }

    fn err_env(pairs: &[(&str, &str)]) -> ConfigError {
        load_env(pairs).expect_err("configuration should be rejected")
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mcpd-config-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mcpd.toml");
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn defaults_load_and_match_the_documented_values() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config.server.http_addr, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(config.server.tcp_addr, "127.0.0.1:7401".parse().unwrap());
        assert_eq!(config.store.backend, StoreBackend::Embedded);
        assert_eq!(config.store.data_dir, PathBuf::from("./data"));
        assert_eq!(config.store.sqlite_synchronous, SqliteSynchronous::Normal);
        assert_eq!(config.store.mongodb.uri, None);
        assert_eq!(config.store.mongodb.database, "mcpd");
        assert_eq!(config.broker.backend, BrokerBackend::Memory);
        assert_eq!(config.broker.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(config.broker.redis.key_prefix, "mcpd:");
        assert_eq!(config.broker.redis.pool_size, 16);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.scheduler.lease_ttl_seconds, 30);
        assert_eq!(config.scheduler.heartbeat_timeout_seconds, 90);
        assert_eq!(config.retention.events_days, 30);
        assert_eq!(config.retention.tasks_days, 90);
        assert_eq!(config.retention.pipelines_days, 180);
        assert_eq!(config.retention.audit_logs_days, 2190);
        assert_eq!(config.retention.metrics_days, 30);
    }

    #[test]
    fn every_default_key_has_a_comment() {
        let mut previous = "";
        for line in DEFAULT_TOML.lines().map(str::trim) {
            let is_key = !line.is_empty() && !line.starts_with('#') && !line.starts_with('[');
            if is_key {
                assert!(
                    previous.starts_with('#'),
                    "key line {line:?} is not preceded by a comment"
                );
            }
            previous = line;
        }
    }

    #[test]
    fn env_overrides_nested_keys() {
        let config = load_env(&[
            ("MCPD__BROKER__BACKEND", "redis"),
            ("MCPD__BROKER__REDIS__POOL_SIZE", "4"),
            ("MCPD__STORE__BACKEND", "mongodb"),
            ("MCPD__STORE__MONGODB__URI", "mongodb://db.example:27017/"),
            ("MCPD__SERVER__HTTP_ADDR", "0.0.0.0:8080"),
            ("MCPD__LOG__FORMAT", "json"),
            ("UNRELATED", "ignored"),
            ("MCPD_TEST_REDIS_SERVER", "ignored too"),
        ])
        .unwrap();
        assert_eq!(config.broker.backend, BrokerBackend::Redis);
        assert_eq!(config.broker.redis.pool_size, 4);
        assert_eq!(config.store.backend, StoreBackend::Mongodb);
        assert_eq!(
            config.store.mongodb.uri.as_deref(),
            Some("mongodb://db.example:27017/")
        );
        assert_eq!(config.server.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let path = temp_file(
            "layers",
            "[broker]\nbackend = \"redis\"\n[scheduler]\nlease_ttl_seconds = 10\n",
        );
        let config = Config::load_from(
            Some(&path),
            env(&[("MCPD__SCHEDULER__LEASE_TTL_SECONDS", "20")]),
        )
        .unwrap();
        assert_eq!(config.broker.backend, BrokerBackend::Redis);
        assert_eq!(config.scheduler.lease_ttl_seconds, 20);
        assert_eq!(config.scheduler.heartbeat_timeout_seconds, 90);
    }

    #[test]
    fn unknown_broker_backend_names_the_key() {
        let err = err_env(&[("MCPD__BROKER__BACKEND", "foo")]);
        assert_eq!(
            err.to_string(),
            r#"invalid config: broker.backend: unknown backend "foo" (expected "memory" or "redis")"#
        );
    }

    #[test]
    fn unknown_store_backend_names_the_key() {
        let err = err_env(&[("MCPD__STORE__BACKEND", "postgres")]);
        assert_eq!(err.key(), Some("store.backend"));
        assert!(
            err.to_string().contains(r#""embedded" or "mongodb""#),
            "{err}"
        );
    }

    #[test]
    fn unknown_sqlite_synchronous_and_log_format_are_rejected() {
        let err = err_env(&[("MCPD__STORE__SQLITE_SYNCHRONOUS", "off")]);
        assert_eq!(err.key(), Some("store.sqlite_synchronous"));
        let err = err_env(&[("MCPD__LOG__FORMAT", "xml")]);
        assert_eq!(err.key(), Some("log.format"));
    }

    #[test]
    fn unparsable_socket_address_names_the_key() {
        let err = err_env(&[("MCPD__SERVER__HTTP_ADDR", "localhost")]);
        assert_eq!(err.key(), Some("server.http_addr"));
        assert!(err.to_string().contains("invalid socket address"), "{err}");
        let err = err_env(&[("MCPD__SERVER__TCP_ADDR", "127.0.0.1:99999")]);
        assert_eq!(err.key(), Some("server.tcp_addr"));
    }

    #[test]
    fn mongodb_backend_requires_a_uri() {
        let err = err_env(&[("MCPD__STORE__BACKEND", "mongodb")]);
        assert_eq!(
            err.to_string(),
            r#"invalid config: store.mongodb.uri: required when store.backend = "mongodb""#
        );
        let err = err_env(&[
            ("MCPD__STORE__BACKEND", "mongodb"),
            ("MCPD__STORE__MONGODB__URI", ""),
        ]);
        assert_eq!(err.key(), Some("store.mongodb.uri"));
        let err = err_env(&[("MCPD__STORE__MONGODB__URI", "postgres://x")]);
        assert_eq!(err.key(), Some("store.mongodb.uri"));
    }

    #[test]
    fn bad_numbers_name_the_key() {
        let err = err_env(&[("MCPD__BROKER__REDIS__POOL_SIZE", "many")]);
        assert_eq!(err.key(), Some("broker.redis.pool_size"));
        let err = err_env(&[("MCPD__SCHEDULER__LEASE_TTL_SECONDS", "-5")]);
        assert_eq!(err.key(), Some("scheduler.lease_ttl_seconds"));
        let err = err_env(&[("MCPD__SCHEDULER__HEARTBEAT_TIMEOUT_SECONDS", "0")]);
        assert_eq!(
            err.to_string(),
            "invalid config: scheduler.heartbeat_timeout_seconds: must be greater than 0"
        );
        let err = err_env(&[("MCPD__RETENTION__AUDIT_LOGS_DAYS", "0")]);
        assert_eq!(err.key(), Some("retention.audit_logs_days"));
        let err = err_env(&[("MCPD__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "0")]);
        assert_eq!(err.key(), Some("server.shutdown_timeout_seconds"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_full_path() {
        let err = err_env(&[("MCPD__SERVER__HTTP_PORT", "80")]);
        assert_eq!(
            err.to_string(),
            "invalid config: server.http_port: unknown key"
        );
        let err = err_env(&[("MCPD__BROKER__REDIS__PASSWORD", "x")]);
        assert_eq!(err.key(), Some("broker.redis.password"));
        let err = err_env(&[("MCPD__NOPE__KEY", "x")]);
        assert_eq!(err.key(), Some("nope"));
    }

    #[test]
    fn invalid_log_level_is_rejected() {
        let err = err_env(&[("MCPD__LOG__LEVEL", "loud=[[")]);
        assert_eq!(err.key(), Some("log.level"));
    }

    #[test]
    fn bad_redis_url_is_rejected_and_masked_in_the_error() {
        let err = err_env(&[("MCPD__BROKER__REDIS__URL", "http://:secret@h")]);
        assert_eq!(err.key(), Some("broker.redis.url"));
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn missing_and_malformed_files_are_one_line_errors_naming_the_file() {
        let missing = std::env::temp_dir().join("mcpd-config-test-does-not-exist.toml");
        let err = Config::load_from(Some(&missing), Vec::new()).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
        assert!(err.to_string().contains("does-not-exist"), "{err}");

        let path = temp_file("malformed", "[server\nhttp_addr = 1\n");
        let err = Config::load_from(Some(&path), Vec::new()).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
        assert_eq!(err.to_string().lines().count(), 1, "{err}");

        let path = temp_file("typo", "[store]\ndata_dri = \"/x\"\n");
        let err = Config::load_from(Some(&path), Vec::new()).unwrap_err();
        assert_eq!(err.key(), Some("store.data_dri"));
    }

    #[test]
    fn errors_are_always_one_line() {
        for pairs in [
            [("MCPD__BROKER__BACKEND", "foo")],
            [("MCPD__SERVER__HTTP_ADDR", "nope")],
            [("MCPD__BROKER__REDIS__POOL_SIZE", "x")],
            [("MCPD__X", "1")],
        ] {
            let err = err_env(&pairs);
            assert_eq!(err.to_string().lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn mask_url_hides_only_the_password() {
        assert_eq!(
            mask_url("mongodb://admin:s3cret@db1:27017,db2:27017/mcpd?replicaSet=rs0"),
            "mongodb://admin:****@db1:27017,db2:27017/mcpd?replicaSet=rs0"
        );
        assert_eq!(
            mask_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:****@127.0.0.1:6379/0"
        );
        assert_eq!(
            mask_url("redis://p@ss:w@rd@host/"),
            "redis://p@ss:****@host/"
        );
        assert_eq!(mask_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(mask_url("mongodb://user@host/"), "mongodb://user@host/");
        assert_eq!(
            mask_url("mongodb://host/?x=a:b@c"),
            "mongodb://host/?x=a:b@c"
        );
    }

    #[test]
    fn masked_toml_hides_secrets_and_round_trips() {
        let config = load_env(&[
            ("MCPD__STORE__BACKEND", "mongodb"),
            (
                "MCPD__STORE__MONGODB__URI",
                "mongodb://admin:s3cret@db:27017/",
            ),
            ("MCPD__BROKER__REDIS__URL", "redis://:hunter2@cache:6379"),
        ])
        .unwrap();
        let rendered = config.masked_toml();
        assert!(!rendered.contains("s3cret"), "{rendered}");
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(
            rendered.contains("mongodb://admin:****@db:27017/"),
            "{rendered}"
        );
        assert!(rendered.contains("redis://:****@cache:6379"), "{rendered}");
        // The rendering is itself a valid configuration file with the same values.
        let path = temp_file("roundtrip", &rendered);
        let reloaded = Config::load_from(Some(&path), Vec::new()).unwrap();
        assert_eq!(reloaded, config.masked());
    }
}

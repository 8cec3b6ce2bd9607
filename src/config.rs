//! Typed, layered configuration: defaults → optional file (TOML or YAML) →
//! environment (`CAS_BRIDGE__SECTION__KEY`).
//!
//! Everything is checked once, in [`Config::validate`], before any request is
//! sent: a bad value stops the start with a [`ConfigError`] that names the
//! field and says what is allowed. The names of the fields are a public
//! contract (operators and the Helm chart use them).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cas::Dialect;
use crate::shard::Shard;

/// The API's reach into the past, counted from the time of the request.
pub const API_REACH: Duration = Duration::from_secs(72 * 3600);
/// The longest window the API accepts in one request.
pub const API_MAX_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

/// The 12 services every current integration polls.
pub const DEFAULT_SERVICES: [&str; 12] = [
    "exchange",
    "sharepoint",
    "onedrive",
    "dropbox",
    "box",
    "googledrive",
    "gmail",
    "teams",
    "exchangeserver",
    "salesforce_sandbox",
    "salesforce_production",
    "teams_chat",
];
/// The 4 event types every current integration polls.
pub const DEFAULT_EVENTS: [&str; 4] = ["securityrisk", "virtualanalyzer", "ransomware", "dlp"];

/// Regions and their API hosts.
pub const REGIONS: [(&str, &str); 8] = [
    ("us", "https://api.tmcas.trendmicro.com"),
    ("eu", "https://api-eu.tmcas.trendmicro.com"),
    ("jp", "https://api.tmcas.trendmicro.co.jp"),
    ("au", "https://api-au.tmcas.trendmicro.com"),
    ("uk", "https://api.tmcas.trendmicro.co.uk"),
    ("ca", "https://api-ca.tmcas.trendmicro.com"),
    ("sg", "https://api.tmcas.trendmicro.com.sg"),
    ("in", "https://api-in.tmcas.trendmicro.com"),
];

/// A configuration that could not be loaded or is not allowed.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {field}: {problem}")]
pub struct ConfigError {
    /// The dotted name of the offending field, e.g. `window.max`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A duration written as `30s`, `5m`, `2h`, `3d` or `250ms` (a bare number is seconds).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (n, unit) = if ms % 86_400_000 == 0 && ms > 0 {
            (ms / 86_400_000, "d")
        } else if ms % 3_600_000 == 0 && ms > 0 {
            (ms / 3_600_000, "h")
        } else if ms % 60_000 == 0 && ms > 0 {
            (ms / 60_000, "m")
        } else if ms % 1000 == 0 {
            (ms / 1000, "s")
        } else {
            (ms, "ms")
        };
        write!(f, "{n}{unit}")
    }
}

/// Parses `30s`, `5m`, `2h`, `3d`, `250ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use e.g. 30s, 5m, 2h, 3d)"))?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Dur(Duration::from_secs(n))),
            Raw::S(s) => parse_duration(&s)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a shard with no cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The current time: only new events.
    Now,
    /// This long before the start of the process.
    Ago(Duration),
    /// A fixed time (clamped to the API's reach at run time, the gap logged).
    At(DateTime<Utc>),
}

impl StartFrom {
    /// The initial cursor for a shard that has none.
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            StartFrom::Now => now,
            StartFrom::Ago(d) => now - chrono::Duration::from_std(d).unwrap_or_default(),
            StartFrom::At(t) => t,
        }
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "now" {
            return Ok(StartFrom::Now);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
            return Ok(StartFrom::At(t.with_timezone(&Utc)));
        }
        parse_duration(&s).map(StartFrom::Ago).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{s}` is not `now`, a duration back (e.g. 2h) or an RFC 3339 time"
            ))
        })
    }
}

impl Serialize for StartFrom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StartFrom::Now => s.serialize_str("now"),
            StartFrom::Ago(d) => s.collect_str(&Dur(*d)),
            StartFrom::At(t) => s.collect_str(&t.to_rfc3339()),
        }
    }
}

fn redact<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[REDACTED]"),
        None => s.serialize_none(),
    }
}

/// The whole configuration of one bridge process.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How to reach the CAS SIEM API.
    pub api: ApiConfig,
    /// Which (service, event) pairs to collect.
    pub shards: ShardsConfig,
    /// Window planning.
    pub window: WindowConfig,
    /// The token's request budget.
    pub budget: BudgetConfig,
    /// Fleet coordination through Redis.
    pub coord: CoordConfig,
    /// Where events go.
    pub sink: SinkConfig,
    /// JSON Schemas events are validated against.
    pub schemas: SchemasConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// The health and metrics server.
    pub ops: OpsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9090".into(),
        }
    }
}

impl OpsConfig {
    pub fn addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::new(
                "ops.listen",
                format!("`{}` is not an address such as 0.0.0.0:9090", self.listen),
            )
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Explicit base URL, e.g. `https://api.tmcas.trendmicro.com`.
    pub base_url: Option<String>,
    /// A region name (us, eu, jp, au, uk, ca, sg, in), instead of `base_url`.
    pub region: Option<String>,
    /// `v1` (live API shape) or `legacy` (the seed page's shape).
    pub dialect: Dialect,
    /// The bearer token. Never logged.
    #[serde(serialize_with = "redact")]
    pub token: Option<SecretString>,
    /// A file holding the token (e.g. a mounted Kubernetes secret).
    pub token_file: Option<PathBuf>,
    /// Timeout of one HTTP request.
    pub timeout: Dur,
    /// Page size; default 500 for `v1`, 200 for `legacy`.
    pub page_limit: Option<u32>,
    /// Largest response body accepted, in bytes.
    pub max_body_bytes: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            region: None,
            dialect: Dialect::V1,
            token: None,
            token_file: None,
            timeout: Dur::secs(30),
            page_limit: None,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

impl ApiConfig {
    /// The base URL from `base_url` or `region` (default: the US host).
    pub fn resolved_base_url(&self) -> Result<url::Url, ConfigError> {
        let raw = match (&self.base_url, &self.region) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "api.base_url",
                    "set api.base_url or api.region, not both",
                ))
            }
            (Some(b), None) => b.clone(),
            (None, Some(r)) => REGIONS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(r))
                .map(|(_, host)| host.to_string())
                .ok_or_else(|| {
                    ConfigError::new(
                        "api.region",
                        format!("unknown region `{r}` (allowed: us, eu, jp, au, uk, ca, sg, in)"),
                    )
                })?,
            (None, None) => REGIONS[0].1.to_string(),
        };
        let url = url::Url::parse(&raw)
            .map_err(|e| ConfigError::new("api.base_url", format!("`{raw}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::new(
                "api.base_url",
                format!("`{raw}` must be an http(s) URL with a host"),
            ));
        }
        Ok(url)
    }

    /// The page size in force.
    pub fn effective_page_limit(&self) -> u32 {
        self.page_limit.unwrap_or(self.dialect.max_page_limit())
    }

    /// The token, from `token` or `token_file`.
    pub fn resolved_token(&self) -> Result<SecretString, ConfigError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "api.token",
                "set api.token or api.token_file, not both",
            )),
            (Some(t), None) if t.expose_secret().trim().is_empty() => {
                Err(ConfigError::new("api.token", "is empty"))
            }
            (Some(t), None) => Ok(t.clone()),
            (None, Some(p)) => {
                let s = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new(
                        "api.token_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                let s = s.trim();
                if s.is_empty() {
                    return Err(ConfigError::new("api.token_file", "the file is empty"));
                }
                Ok(SecretString::from(s.to_string()))
            }
            (None, None) => Err(ConfigError::new(
                "api.token",
                "a token is required: set api.token or api.token_file (env CAS_BRIDGE__API__TOKEN)",
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// `service:event` pairs; default 12 services × 4 events.
    pub pairs: Vec<String>,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        let pairs = DEFAULT_SERVICES
            .iter()
            .flat_map(|s| DEFAULT_EVENTS.iter().map(move |e| format!("{s}:{e}")))
            .collect();
        Self { pairs }
    }
}

impl ShardsConfig {
    /// The configured shards, parsed and checked for duplicates.
    pub fn shards(&self) -> Result<Vec<Shard>, ConfigError> {
        let mut out: Vec<Shard> = Vec::with_capacity(self.pairs.len());
        for p in &self.pairs {
            let shard: Shard = p
                .parse()
                .map_err(|e: String| ConfigError::new("shards.pairs", e))?;
            if out.contains(&shard) {
                return Err(ConfigError::new(
                    "shards.pairs",
                    format!("`{p}` is listed twice"),
                ));
            }
            out.push(shard);
        }
        if out.is_empty() {
            return Err(ConfigError::new("shards.pairs", "no pair configured"));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Where a shard without a cursor starts: `now`, a duration back, or an RFC 3339 time.
    pub start_from: StartFrom,
    /// How far behind now a window ends (events reach the API late).
    pub lag: Dur,
    /// How far back each window re-reads before the cursor (late events).
    pub overlap: Dur,
    /// The longest window (at most 3 days).
    pub max: Dur,
    /// A shard is polled again only when its cursor is this far behind `now − lag`.
    pub min_interval: Dur,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            start_from: StartFrom::Ago(Duration::from_secs(3600)),
            lag: Dur::secs(60),
            overlap: Dur::secs(120),
            max: Dur(API_MAX_WINDOW),
            min_interval: Dur::secs(30),
        }
    }
}

/// How the budget counts requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BudgetMode {
    /// Never more than `per_minute` in any 60 s (and `per_day` in any 24 h).
    #[default]
    Sliding,
    /// Windows that start at the first request, as the live API counts.
    Fixed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Requests per minute for the token (all workers together).
    pub per_minute: u32,
    /// Requests per day for the token (all workers together).
    pub per_day: u32,
    /// `sliding` or `fixed`.
    pub mode: BudgetMode,
    /// Added to the budget's minute (and day): a permit is taken on Redis's
    /// clock, but the API counts the request when it arrives, up to this
    /// much later.
    pub margin: Dur,
}

impl BudgetConfig {
    /// The least time between two permits: the minute spread evenly over
    /// `per_minute` requests.
    pub fn pace(&self) -> Duration {
        Duration::from_millis(60_000 / u64::from(self.per_minute.max(1)))
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            per_minute: 10,
            per_day: 14_400,
            mode: BudgetMode::Sliding,
            margin: Dur(Duration::from_millis(250)),
        }
    }
}

fn redact_url<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(u) => match url::Url::parse(u.expose_secret()) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("REDACTED"));
                }
                s.serialize_str(url.as_str())
            }
            Err(_) => s.serialize_str("[unparsable]"),
        },
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://…`; none = in-process (one worker).
    #[serde(serialize_with = "redact_url")]
    pub redis_url: Option<SecretString>,
    /// Namespace of every Redis key.
    pub prefix: String,
    /// Lifetime of a shard lease; renewed every third of it.
    pub lease_ttl: Dur,
    /// This worker's name (default: host name, process id and a random suffix).
    pub worker_id: Option<String>,
}

impl Default for CoordConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: "cas-bridge".into(),
            lease_ttl: Dur::secs(15),
            worker_id: None,
        }
    }
}

/// Which sink events go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Kafka,
    Nats,
    Jsonl,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `kafka`, `nats` or `jsonl`.
    pub kind: SinkKind,
    /// Topic / subject template; placeholders `{service}` and `{event}`.
    pub topic_template: String,
    /// Dead-letter topic / subject.
    pub dead_letter: String,
    pub kafka: KafkaConfig,
    pub nats: NatsConfig,
    pub jsonl: JsonlConfig,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            kind: SinkKind::Jsonl,
            topic_template: "cas.{service}.{event}".into(),
            dead_letter: "cas.deadletter".into(),
            kafka: KafkaConfig::default(),
            nats: NatsConfig::default(),
            jsonl: JsonlConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// librdkafka properties passed through (SASL, SSL, …).
    pub properties: BTreeMap<String, String>,
    /// Create the topics at start through the admin API.
    pub create_topics: bool,
    /// Partitions of topics the bridge creates.
    pub partitions: i32,
    /// Replication factor of topics the bridge creates.
    pub replication: i32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            properties: BTreeMap::new(),
            create_topics: true,
            partitions: 1,
            replication: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    pub url: String,
    /// JetStream stream name (created if absent).
    pub stream: String,
    /// A `.creds` file.
    pub credentials: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "CAS".into(),
            credentials: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlConfig {
    /// File to append to; `-` is stdout.
    pub path: String,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        Self { path: "-".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// A directory replacing the built-in schemas (same file names).
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long shutdown may take before in-flight work is abandoned.
    pub grace: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Dur::secs(20),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` or `text`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `cas_bridge=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `CAS_BRIDGE__*` variables,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, vars)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} does not exist", f.display()),
                ));
            }
            b = b.add_source(config::File::from(f));
        }
        let env: config::Map<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("CAS_BRIDGE__"))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("CAS_BRIDGE")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("shards.pairs")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw = b.build().map_err(from_config_error)?;
        let cfg: Config = raw.try_deserialize().map_err(from_config_error)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule no type can express. Does not read the token file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.api.resolved_base_url()?;
        if self.api.timeout.get().is_zero() {
            return Err(ConfigError::new("api.timeout", "must be greater than 0"));
        }
        let max = self.api.dialect.max_page_limit();
        if let Some(l) = self.api.page_limit {
            if l == 0 || l > max {
                return Err(ConfigError::new(
                    "api.page_limit",
                    format!(
                        "{l} is out of range: 1..={max} for dialect {}",
                        self.api.dialect
                    ),
                ));
            }
        }
        if self.api.max_body_bytes < 64 * 1024 {
            return Err(ConfigError::new(
                "api.max_body_bytes",
                "must be at least 65536",
            ));
        }
        self.shards.shards()?;
        let w = &self.window;
        if w.max.get().is_zero() || w.max.get() > API_MAX_WINDOW {
            return Err(ConfigError::new(
                "window.max",
                format!("{} is out of range: more than 0 and at most 3d", w.max),
            ));
        }
        if w.lag.get() > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new("window.lag", "must be at most 1d"));
        }
        if w.overlap.get() >= API_REACH / 2 {
            return Err(ConfigError::new("window.overlap", "must be less than 36h"));
        }
        if w.min_interval.get() > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "window.min_interval",
                "must be at most 1d",
            ));
        }
        if let StartFrom::Ago(d) = w.start_from {
            if d > API_REACH {
                return Err(ConfigError::new(
                    "window.start_from",
                    format!("{} reaches past the API's 72h limit", Dur(d)),
                ));
            }
        }
        if self.budget.per_minute == 0 {
            return Err(ConfigError::new("budget.per_minute", "must be at least 1"));
        }
        if self.budget.per_day == 0 {
            return Err(ConfigError::new("budget.per_day", "must be at least 1"));
        }
        if self.budget.margin.get() > Duration::from_secs(30) {
            return Err(ConfigError::new("budget.margin", "must be at most 30s"));
        }
        if let Some(u) = &self.coord.redis_url {
            match url::Url::parse(u.expose_secret()) {
                Ok(url)
                    if matches!(url.scheme(), "redis" | "rediss") && url.host_str().is_some() => {}
                _ => {
                    return Err(ConfigError::new(
                        "coord.redis_url",
                        "must be redis://[:password@]host[:port][/db] or rediss://…",
                    ))
                }
            }
        }
        let p = &self.coord.prefix;
        if p.is_empty()
            || p.len() > 64
            || p.chars().any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(ConfigError::new(
                "coord.prefix",
                format!("`{p}` must be 1 to 64 characters without spaces or braces"),
            ));
        }
        let ttl = self.coord.lease_ttl.get();
        if ttl < Duration::from_secs(3) || ttl > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "coord.lease_ttl",
                format!("{} is out of range: 3s to 5m", self.coord.lease_ttl),
            ));
        }
        if let Some(w) = &self.coord.worker_id {
            if w.is_empty()
                || w.len() > 128
                || w.contains(':')
                || w.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::new(
                    "coord.worker_id",
                    "must be 1 to 128 characters without spaces or colons",
                ));
            }
        }
        crate::sink::Topics::new(&self.sink.topic_template, &self.sink.dead_letter)?;
        match self.sink.kind {
            SinkKind::Kafka => {
                if self.sink.kafka.brokers.trim().is_empty() {
                    return Err(ConfigError::new("sink.kafka.brokers", "is empty"));
                }
                if self.sink.kafka.partitions < 1 {
                    return Err(ConfigError::new(
                        "sink.kafka.partitions",
                        "must be at least 1",
                    ));
                }
                if self.sink.kafka.replication < 1 {
                    return Err(ConfigError::new(
                        "sink.kafka.replication",
                        "must be at least 1",
                    ));
                }
                for k in self.sink.kafka.properties.keys() {
                    if matches!(
                        k.as_str(),
                        "bootstrap.servers" | "enable.idempotence" | "acks"
                    ) {
                        return Err(ConfigError::new(
                            format!("sink.kafka.properties.{k}"),
                            "is set by the bridge and cannot be overridden",
                        ));
                    }
                }
            }
            SinkKind::Nats => {
                if self.sink.nats.url.trim().is_empty() {
                    return Err(ConfigError::new("sink.nats.url", "is empty"));
                }
                let s = &self.sink.nats.stream;
                if s.is_empty()
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ConfigError::new(
                        "sink.nats.stream",
                        format!("`{s}` must be non-empty and use only A-Z a-z 0-9 - _"),
                    ));
                }
            }
            SinkKind::Jsonl => {
                if self.sink.jsonl.path.trim().is_empty() {
                    return Err(ConfigError::new(
                        "sink.jsonl.path",
                        "is empty (use - for stdout)",
                    ));
                }
            }
        }
        if !self.shutdown.grace.get().is_zero()
            && self.shutdown.grace.get() > Duration::from_secs(3600)
        {
            return Err(ConfigError::new("shutdown.grace", "must be at most 1h"));
        }
        self.ops.addr()?;
        if !matches!(self.log.format.as_str(), "json" | "text") {
            return Err(ConfigError::new(
                "log.format",
                format!("`{}` is not json or text", self.log.format),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("`{}` is not a tracing filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML-like JSON, token redacted.
    pub fn redacted_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Turns the `config` crate's errors into one naming the field.
fn from_config_error(e: config::ConfigError) -> ConfigError {
    let msg = e.to_string();
    match e {
        config::ConfigError::Type { key, .. } => {
            ConfigError::new(key.unwrap_or_else(|| "?".into()), msg)
        }
        config::ConfigError::Message(m) => {
            // Messages from serde carry the path as `... for key `a.b``
            let field = m
                .rsplit_once("for key `")
                .map(|(_, k)| k.trim_end_matches('`').to_string())
                .or_else(|| {
                    m.split_once("unknown field `")
                        .map(|(_, r)| r.split('`').next().unwrap_or("?").to_string())
                })
                .unwrap_or_else(|| "config".into());
            ConfigError::new(field, m)
        }
        config::ConfigError::NotFound(k) => ConfigError::new(k, "not found"),
        other => ConfigError::new("config", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("3d").unwrap(), API_MAX_WINDOW);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn defaults_are_valid_and_have_48_shards() {
        let c = load(&[]).unwrap();
        assert_eq!(c.shards.shards().unwrap().len(), 48);
        assert_eq!(c.api.effective_page_limit(), 500);
        assert_eq!(c.budget.per_minute, 10);
    }

    #[test]
    fn env_overrides_and_lists() {
        let c = load(&[
            ("CAS_BRIDGE__SHARDS__PAIRS", "exchange:dlp,box:ransomware"),
            ("CAS_BRIDGE__WINDOW__LAG", "5m"),
            ("CAS_BRIDGE__API__DIALECT", "legacy"),
            ("CAS_BRIDGE__BUDGET__PER_MINUTE", "20"),
        ])
        .unwrap();
        assert_eq!(c.shards.pairs, vec!["exchange:dlp", "box:ransomware"]);
        assert_eq!(c.window.lag.get(), Duration::from_secs(300));
        assert_eq!(c.api.effective_page_limit(), 200);
        assert_eq!(c.budget.per_minute, 20);
    }

    #[test]
    fn redaction_hides_the_token() {
        let c = load(&[
            ("CAS_BRIDGE__API__TOKEN", "s3cr3t-token-value"),
            (
                "CAS_BRIDGE__COORD__REDIS_URL",
                "redis://:s3cr3tpw@redis:6379/0",
            ),
        ])
        .unwrap();
        assert!(!c.redacted_json().contains("s3cr3tpw"));
        assert!(!format!("{c:?}").contains("s3cr3tpw"));
        assert!(!c.redacted_json().contains("s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(c.redacted_json().contains("[REDACTED]"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("CAS_BRIDGE__WINDOW__MAX", "4d", "window.max"),
            ("CAS_BRIDGE__API__REGION", "mars", "api.region"),
            (
                "CAS_BRIDGE__SINK__TOPIC_TEMPLATE",
                "cas.{tenant}",
                "sink.topic_template",
            ),
            ("CAS_BRIDGE__API__PAGE_LIMIT", "501", "api.page_limit"),
            ("CAS_BRIDGE__WINDOW__START_FROM", "80h", "window.start_from"),
            ("CAS_BRIDGE__SHARDS__PAIRS", "exchange", "shards.pairs"),
            ("CAS_BRIDGE__BUDGET__PER_MINUTE", "0", "budget.per_minute"),
            (
                "CAS_BRIDGE__COORD__REDIS_URL",
                "http://x",
                "coord.redis_url",
            ),
            ("CAS_BRIDGE__COORD__LEASE_TTL", "1s", "coord.lease_ttl"),
        ];
        for (k, v, field) in cases {
            let e = load(&[(k, v)]).unwrap_err();
            assert_eq!(&e.field, field, "{k}={v}: {e}");
        }
    }
}

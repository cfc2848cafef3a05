//! Configuration: one root with a section per subsystem, defaults beside each
//! section, unknown keys rejected.
//!
//! Precedence (SPEC 12): built-in defaults < TOML file < `CONFER_<SECTION>_<KEY>`
//! environment variables < CLI flags. Layering is figment's; only the env-name
//! mapping is ours (the first `_` after the prefix separates section and key, so
//! `CONFER_TURN_ALLOW_LOOPBACK_PEERS` is `turn.allow_loopback_peers`). A
//! `CONFER_*` variable whose first part names no section is not ours (a
//! Kubernetes Service named `confer` gives every pod `CONFER_PORT`,
//! `CONFER_SERVICE_HOST`, ...): it is ignored and reported in [`Loaded`].

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A duration written as a human string (`"30s"`, `"24h"`, `"500ms"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?}: {e} (write e.g. \"30s\", \"24h\")")))
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub media: MediaConfig,
    pub turn: TurnConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    pub calls: CallsConfig,
    pub rooms: RoomsConfig,
    pub ws: WsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// HTTP + WebSocket listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain; HTTPS when set together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate into `certs/`.
    pub tls_self_signed: bool,
    /// Origins (`https://app.example.com`) whose pages may call the API from
    /// a browser (CORS, SPEC 3); `["*"]` for any; empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret for access tokens; generated into the data dir when unset.
    pub secret: Option<String>,
    /// Allow `POST /auth/guest` (on with `--dev`).
    pub allow_guests: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The SFU's UDP socket (one port for every PeerConnection).
    pub listen: SocketAddr,
    /// Address advertised in ICE candidates first (deployments behind NAT),
    /// before the listen address or, on a wildcard listen, every interface
    /// address; `"auto"` asks [`MediaConfig::stun_servers`] at start.
    pub public_ip: Option<PublicIp>,
    /// STUN servers (`host:port`) asked for the public address when
    /// `public_ip = "auto"`; a list, or one comma-separated string (env).
    #[serde(deserialize_with = "one_or_many")]
    pub stun_servers: Vec<String>,
    /// SFU worker threads, each with its own UDP port (`listen`'s port, then
    /// the next ones); a room lives on one worker. 0: one per core.
    pub workers: usize,
    /// Fit what each subscriber receives to its downstream estimate (SPEC
    /// 5.1). Off, the estimate is still measured and reported, but only
    /// ceilings and the publisher's layers decide (a lab with no real links).
    pub bandwidth_estimation: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7882".parse().unwrap(),
            public_ip: None,
            stun_servers: DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect(),
            workers: 0,
            bandwidth_estimation: true,
        }
    }
}

/// Asked only with `media.public_ip = "auto"`.
pub const DEFAULT_STUN_SERVERS: [&str; 2] = ["stun.l.google.com:19302", "stun.cloudflare.com:3478"];

/// `media.public_ip`: an address, or `"auto"` (learn it from STUN at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicIp {
    Addr(std::net::IpAddr),
    Auto,
}

impl Serialize for PublicIp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PublicIp::Addr(ip) => s.collect_str(ip),
            PublicIp::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for PublicIp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(PublicIp::Auto);
        }
        s.parse().map(PublicIp::Addr).map_err(|_| {
            serde::de::Error::custom(format!("{s:?} is neither an IP address nor \"auto\" (e.g. \"203.0.113.10\")"))
        })
    }
}

/// A list of strings, or one string of comma-separated items (handy in env).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        OneOrMany::Many(v) => v,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub enabled: bool,
    /// TURN over UDP and TCP on the same port.
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    /// Host put in `/ice-config` URLs; when unset, the listen IP, or on a
    /// wildcard listen `relay_ip`, else the host the HTTP request came in on.
    pub public_host: Option<String>,
    /// The address put in XOR-RELAYED-ADDRESS (SPEC 6): the public address
    /// of the relay ports behind 1:1 NAT. Unset: the address the allocation
    /// request arrived on (never a wildcard).
    pub relay_ip: Option<std::net::IpAddr>,
    pub realm: String,
    /// Shared secret for TURN REST credentials; generated when unset.
    pub secret: Option<String>,
    pub credential_ttl: HumanDuration,
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    pub allow_loopback_peers: bool,
    pub allowed_peer_ranges: Vec<String>,
    /// Allocations one user may hold at once (486 Allocation Quota Reached beyond).
    pub user_quota: u32,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:3478".parse().unwrap(),
            tls_listen: None,
            public_host: None,
            relay_ip: None,
            realm: "confer".into(),
            secret: None,
            credential_ttl: Duration::from_secs(24 * 3600).into(),
            relay_port_min: 49160,
            relay_port_max: 49400,
            allow_loopback_peers: false,
            allowed_peer_ranges: Vec::new(),
            user_quota: 100,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled directory; also holds the generated secrets.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("./data") }
    }
}

/// Several nodes as one service (SPEC 13). Unset `redis_url`: a single node
/// on sled, and the other keys are unused.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host[:port][/db]` (or `unix:///path.sock`):
    /// calls, history, rooms and analytics live there instead of sled.
    pub redis_url: Option<String>,
    /// This node's id in the cluster; unset: generated once into
    /// `<store.path>/node.id` and reused.
    pub node_id: Option<String>,
    /// A label for the node's region (optional).
    pub region: Option<String>,
}

/// The longest `cluster.node_id` or `cluster.region`.
pub const MAX_LABEL_LEN: usize = 64;

/// Whether `s` may be a node id or region: 1 to 64 of `[A-Za-z0-9._-]`, so
/// it fits in a Redis key and a log line as it is.
pub fn is_label(s: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// ringing → missed after this long.
    pub ring_timeout: HumanDuration,
    /// A party's last WebSocket gone this long → call ended (`disconnected`).
    pub reconnect_grace: HumanDuration,
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self { ring_timeout: Duration::from_secs(30).into(), reconnect_grace: Duration::from_secs(20).into() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Upper bound for a room's `maxParticipants`.
    pub max_participants: u32,
    /// How long a REST join (`POST /rooms/:id/join`) holds a seat.
    pub reservation_ttl: HumanDuration,
    /// `room-message`s each participant may send per second, sustained
    /// (answered `rate-limited` above it; the connection's own limit applies too).
    pub chat_rate: f64,
    /// ... and in a burst.
    pub chat_burst: f64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            max_participants: 100,
            reservation_ttl: Duration::from_secs(60).into(),
            chat_rate: 5.0,
            chat_burst: 10.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// The server pings every connection this often.
    pub ping_interval: HumanDuration,
    /// A connection that sent nothing (not even a pong) this long is closed.
    pub idle_timeout: HumanDuration,
    /// After `token-expired`, how long a client has to send `refresh`.
    pub token_grace: HumanDuration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(15).into(),
            idle_timeout: Duration::from_secs(45).into(),
            token_grace: Duration::from_secs(30).into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `confer=debug,info`; `RUST_LOG` wins.
    pub level: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), json: false }
    }
}

/// Overrides from CLI flags: the last layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub http_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub dev: bool,
    /// `--lan`: HTTP, media and TURN on every interface (keeping their
    /// ports) and the self-signed certificate on.
    pub lan: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist (pass --config FILE, or remove the flag to use defaults)")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The default config file, used when it exists and no `--config` is given.
pub const DEFAULT_PATH: &str = "config/confer.toml";

impl Config {
    /// Load defaults, then `file` (an explicit file must exist; the default one
    /// may be absent), then `CONFER_*` env, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Loaded, ConfigError> {
        Self::load_with_env(file, overrides, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_owned())),
            Some(p) => fig = fig.merge(Toml::file_exact(p)),
            None if Path::new(DEFAULT_PATH).exists() => fig = fig.merge(Toml::file_exact(DEFAULT_PATH)),
            None => {}
        }
        // Env: figment's Env reads the process environment; we feed it our own
        // list so tests need not mutate global state.
        let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("CONFER_")).collect();
        let sections = section_names();
        let mut ignored_env = Vec::new();
        let mut env_toml = toml::Table::new();
        for (k, v) in &env {
            let rest = &k["CONFER_".len()..];
            let (section, key) = rest.split_once('_').unwrap_or((rest, ""));
            let section = section.to_ascii_lowercase();
            if !sections.contains(&section) {
                ignored_env.push(k.clone());
                continue;
            }
            if key.is_empty() {
                return Err(ConfigError::Invalid(format!("environment variable {k}: expected CONFER_<SECTION>_<KEY>")));
            }
            let key = key.to_ascii_lowercase();
            let value = parse_env_value(v);
            env_toml
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| ConfigError::Invalid(format!("environment variable {k}")))?
                .insert(key, value);
        }
        fig = fig.merge(Toml::string(&toml::to_string(&env_toml).map_err(|e| ConfigError::Invalid(e.to_string()))?));

        if let Some(a) = overrides.http_listen {
            fig = fig.merge(Serialized::default("http.listen", a));
        }
        if let Some(d) = &overrides.data_dir {
            fig = fig.merge(Serialized::default("store.path", d));
        }
        if overrides.dev {
            fig = fig.merge(Serialized::default("auth.allow_guests", true));
        }
        if overrides.lan {
            // Only the IP changes: the ports are the file's, env's or --http's.
            let base: Config = fig.extract().map_err(|e| ConfigError::Invalid(describe(e)))?;
            let any = |a: SocketAddr| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), a.port());
            fig = fig
                .merge(Serialized::default("http.listen", any(base.http.listen)))
                .merge(Serialized::default("media.listen", any(base.media.listen)))
                .merge(Serialized::default("turn.listen", any(base.turn.listen)))
                .merge(Serialized::default("http.tls_self_signed", true));
        }
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Invalid(describe(e)))?;
        cfg.validate()?;
        ignored_env.sort();
        Ok(Loaded { config: cfg, ignored_env })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.turn.relay_port_min > self.turn.relay_port_max {
            return Err(ConfigError::Invalid("turn.relay_port_min is greater than turn.relay_port_max".into()));
        }
        if !(self.rooms.chat_rate > 0.0 && self.rooms.chat_burst >= 1.0) {
            return Err(ConfigError::Invalid("rooms.chat_rate must be above 0 and rooms.chat_burst at least 1".into()));
        }
        if self.rooms.max_participants < 2 {
            return Err(ConfigError::Invalid("rooms.max_participants must be at least 2".into()));
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::Invalid("http.tls_cert and http.tls_key must be set together".into()));
        }
        for o in &self.http.cors_origins {
            if o == "*" {
                if self.http.cors_origins.len() > 1 {
                    return Err(ConfigError::Invalid(
                        "http.cors_origins: \"*\" allows every origin; list it alone".into(),
                    ));
                }
            } else if !is_origin(o) {
                return Err(ConfigError::Invalid(format!(
                    "http.cors_origins: {o:?} is not an origin (write scheme://host[:port], lower-case, no path, e.g. \"https://app.example.com\")"
                )));
            } else if (o.starts_with("https://") && o.ends_with(":443"))
                || (o.starts_with("http://") && o.ends_with(":80"))
            {
                // A browser's Origin never has the scheme's default port, so this would match nothing.
                return Err(ConfigError::Invalid(format!(
                    "http.cors_origins: {o:?} has its scheme's default port, which browsers leave out: write it without"
                )));
            }
        }
        if let Some(PublicIp::Addr(ip)) = self.media.public_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::Invalid(format!("media.public_ip: {ip} cannot be advertised")));
            }
        }
        if self.media.public_ip == Some(PublicIp::Auto) && self.media.stun_servers.is_empty() {
            return Err(ConfigError::Invalid("media.public_ip = \"auto\" needs media.stun_servers".into()));
        }
        if let Some(ip) = self.turn.relay_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::Invalid(format!("turn.relay_ip: {ip} cannot be a relayed address")));
            }
        }
        if let Some(s) = &self.auth.secret {
            if s.len() < 16 {
                return Err(ConfigError::Invalid("auth.secret must be at least 16 characters".into()));
            }
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if let Some(url) = &c.redis_url {
            // The URL itself is not repeated: it may hold a password.
            redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|e| {
                ConfigError::Invalid(format!(
                    "cluster.redis_url: {e} (write redis://[user:password@]host[:port][/db], e.g. redis://127.0.0.1:6379/0, or unix:///path/to/redis.sock)"
                ))
            })?;
        }
        for (key, v) in [("cluster.node_id", &c.node_id), ("cluster.region", &c.region)] {
            if v.as_deref().is_some_and(|v| !is_label(v)) {
                return Err(ConfigError::Invalid(format!(
                    "{key}: 1 to {MAX_LABEL_LEN} of letters, digits, '.', '_' and '-'"
                )));
            }
        }
        Ok(())
    }
}

/// What [`Config::load`] produced, and what of the environment it left alone.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// `CONFER_*` variables naming no config section, sorted (names only:
    /// their values may be anything, secrets included).
    pub ignored_env: Vec<String>,
}

impl Loaded {
    /// The warning to give once at start when some variables were ignored.
    pub fn ignored_env_warning(&self) -> Option<String> {
        if self.ignored_env.is_empty() {
            return None;
        }
        Some(format!(
            "ignoring environment variables that name no config section (not CONFER_<SECTION>_<KEY> of {}): {}",
            section_names().join(", "),
            self.ignored_env.join(", ")
        ))
    }
}

/// The config's sections (`http`, `auth`, ...), from the type itself.
fn section_names() -> Vec<String> {
    toml::Table::try_from(Config::default()).map(|t| t.keys().cloned().collect()).unwrap_or_default()
}

/// `scheme://host[:port]` as a browser sends it in `Origin`: lower-case, no
/// path, no trailing slash.
fn is_origin(o: &str) -> bool {
    let Some((scheme, host)) = o.split_once("://") else { return false };
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]".contains(&b);
    !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && !host.is_empty()
        && host.bytes().all(ok)
}

/// An env value as TOML: numbers, booleans and arrays as such, else a string.
fn parse_env_value(v: &str) -> toml::Value {
    let wrapped = format!("v = {v}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    }
}

/// figment's error with the full key path (`unknown field: found `foo` in `http``).
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let src = e.metadata.as_ref().and_then(|m| m.source.as_ref()).map(|s| format!(" (from {s})"));
            if path.is_empty() {
                format!("{}{}", e.kind, src.unwrap_or_default())
            } else {
                format!("{path}: {}{}", e.kind, src.unwrap_or_default())
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_all(toml, env).map(|l| l.config)
    }

    fn load_all(toml: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml).unwrap();
        let env = env.iter().map(|(a, b)| (a.to_string(), b.to_string()));
        Config::load_with_env(Some(&p), &Overrides::default(), env)
    }

    #[test]
    fn defaults_match_spec() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.media.listen.to_string(), "127.0.0.1:7882");
        assert_eq!(c.turn.listen.to_string(), "127.0.0.1:3478");
        assert_eq!(c.calls.ring_timeout.0, Duration::from_secs(30));
        assert_eq!(c.turn.credential_ttl.0, Duration::from_secs(86400));
        assert!(!c.auth.allow_guests);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = load("[bogus]\nx = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_cli_overrides_env() {
        let c = load(
            "[calls]\nring_timeout = \"5s\"\n[turn]\nallow_loopback_peers = false\n",
            &[("CONFER_CALLS_RING_TIMEOUT", "7s"), ("CONFER_TURN_ALLOW_LOOPBACK_PEERS", "true")],
        )
        .unwrap();
        assert_eq!(c.calls.ring_timeout.0, Duration::from_secs(7));
        assert!(c.turn.allow_loopback_peers);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[http]\nlisten = \"127.0.0.1:1000\"\n").unwrap();
        let o = Overrides { http_listen: Some("127.0.0.1:2000".parse().unwrap()), ..Default::default() };
        let c = Config::load_with_env(Some(&p), &o, [("CONFER_HTTP_LISTEN".into(), "127.0.0.1:3000".into())])
            .unwrap()
            .config;
        assert_eq!(c.http.listen.port(), 2000);
    }

    #[test]
    fn unknown_env_key_is_an_error() {
        let e = load("", &[("CONFER_HTTP_LISTN", "x")]).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
        let e = load("", &[("CONFER_HTTP", "x")]).unwrap_err().to_string();
        assert!(e.contains("CONFER_HTTP"), "{e}");
    }

    #[test]
    fn env_naming_no_section_is_ignored_and_reported_by_name() {
        // What Kubernetes sets in every pod for a Service named `confer`.
        let k8s = [
            ("CONFER_PORT", "tcp://10.96.0.12:8080"),
            ("CONFER_SERVICE_HOST", "10.96.0.12"),
            ("CONFER_SERVICE_PORT", "8080"),
            ("CONFER_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("CONFER_PORT_8080_TCP_PROTO", "tcp"),
        ];
        let mut env = k8s.to_vec();
        env.push(("CONFER_CALLS_RING_TIMEOUT", "7s"));
        let l = load_all("", &env).unwrap();
        assert_eq!(l.config.calls.ring_timeout.0, Duration::from_secs(7));
        let mut names: Vec<String> = k8s.iter().map(|(k, _)| k.to_string()).collect();
        names.sort();
        assert_eq!(l.ignored_env, names);
        let w = l.ignored_env_warning().unwrap();
        for (k, v) in k8s {
            assert!(w.contains(k), "{w}");
            // ("8080" is also part of a name.)
            if !k8s.iter().any(|(name, _)| name.contains(v)) {
                assert!(!w.contains(v), "the warning shows a value: {w}");
            }
        }
        assert!(load_all("", &[]).unwrap().ignored_env_warning().is_none());
    }

    #[test]
    fn cors_origins_are_origins() {
        let c = load("[http]\ncors_origins = [\"https://app.example.com\", \"http://127.0.0.1:3000\"]\n", &[]).unwrap();
        assert_eq!(c.http.cors_origins.len(), 2);
        assert!(load("", &[]).unwrap().http.cors_origins.is_empty());
        let c = load("", &[("CONFER_HTTP_CORS_ORIGINS", "[\"*\"]")]).unwrap();
        assert_eq!(c.http.cors_origins, ["*"]);
        for bad in ["https://app.example.com/", "app.example.com", "https://App.example.com", "https://a.com/x"] {
            let e = load(&format!("[http]\ncors_origins = [{bad:?}]\n"), &[]).unwrap_err().to_string();
            assert!(e.contains("http.cors_origins") && e.contains(bad), "{e}");
        }
        let e = load("[http]\ncors_origins = [\"https://a.com:443\"]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("http.cors_origins") && e.contains("default port"), "{e}");
        assert!(load("[http]\ncors_origins = [\"https://a.com:8443\", \"http://a.com:8080\"]\n", &[]).is_ok());
        let e = load("[http]\ncors_origins = [\"*\", \"https://a.com\"]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("alone"), "{e}");
    }

    #[test]
    fn address_keys_from_file_and_env() {
        let c = load("[media]\npublic_ip = \"203.0.113.10\"\n[turn]\nrelay_ip = \"203.0.113.11\"\n", &[]).unwrap();
        assert_eq!(c.media.public_ip, Some(PublicIp::Addr("203.0.113.10".parse().unwrap())));
        assert_eq!(c.turn.relay_ip, Some("203.0.113.11".parse().unwrap()));
        let c = load(
            "",
            &[
                ("CONFER_MEDIA_PUBLIC_IP", "auto"),
                ("CONFER_MEDIA_STUN_SERVERS", "198.18.0.2:3478, stun.example.net:19302"),
                ("CONFER_TURN_RELAY_IP", "198.18.0.9"),
            ],
        )
        .unwrap();
        assert_eq!(c.media.public_ip, Some(PublicIp::Auto));
        assert_eq!(c.media.stun_servers, ["198.18.0.2:3478", "stun.example.net:19302"]);
        assert_eq!(c.turn.relay_ip, Some("198.18.0.9".parse().unwrap()));
        let c = load("", &[("CONFER_MEDIA_STUN_SERVERS", "[\"198.18.0.2:3478\"]")]).unwrap();
        assert_eq!(c.media.stun_servers, ["198.18.0.2:3478"]);
        assert_eq!(load("", &[]).unwrap().media.stun_servers.len(), DEFAULT_STUN_SERVERS.len());
        for (k, v, named) in [
            ("CONFER_MEDIA_PUBLIC_IP", "somewhere", "media.public_ip"),
            ("CONFER_MEDIA_PUBLIC_IP", "0.0.0.0", "media.public_ip"),
            ("CONFER_TURN_RELAY_IP", "0.0.0.0", "turn.relay_ip"),
            ("CONFER_TURN_RELAY_IP", "auto", "relay_ip"),
        ] {
            let e = load("", &[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(named), "{k}={v}: {e}");
        }
        let e = load("[media]\npublic_ip = \"auto\"\nstun_servers = []\n", &[]).unwrap_err().to_string();
        assert!(e.contains("stun_servers"), "{e}");
    }

    #[test]
    fn lan_takes_every_interface_and_keeps_ports() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[media]\nlisten = \"127.0.0.1:7000\"\n").unwrap();
        let o = Overrides { lan: true, dev: true, ..Default::default() };
        let c =
            Config::load_with_env(Some(&p), &o, [("CONFER_TURN_LISTEN".into(), "127.0.0.1:0".into())]).unwrap().config;
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.media.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(c.turn.listen.to_string(), "0.0.0.0:0");
        assert!(c.http.tls_self_signed && c.auth.allow_guests);
    }

    #[test]
    fn cluster_keys_are_parsed_and_checked() {
        let c = load("", &[]).unwrap();
        assert!(c.cluster.redis_url.is_none() && c.cluster.node_id.is_none());
        let c = load(
            "[cluster]\nredis_url = \"redis://127.0.0.1:6379/0\"\nregion = \"eu-west\"\n",
            &[("CONFER_CLUSTER_NODE_ID", "node-a")],
        )
        .unwrap();
        assert_eq!(c.cluster.redis_url.as_deref(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(c.cluster.node_id.as_deref(), Some("node-a"));
        assert_eq!(c.cluster.region.as_deref(), Some("eu-west"));
        for (env, key) in [
            ("CONFER_CLUSTER_REDIS_URL", "cluster.redis_url"),
            ("CONFER_CLUSTER_NODE_ID", "cluster.node_id"),
            ("CONFER_CLUSTER_REGION", "cluster.region"),
        ] {
            let e = load("", &[(env, "http://sec:ret@x y")]).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
            assert!(!e.contains("sec:ret"), "the URL's password must not be echoed: {e}");
        }
        let e = load("", &[("CONFER_CLUSTER_REDIS_URL", "redis://127.0.0.1:6379/zero")]).unwrap_err().to_string();
        assert!(e.contains("cluster.redis_url") && e.contains("database"), "{e}");
        let e = load("", &[("CONFER_CLUSTER_REDIS_ULR", "redis://127.0.0.1")]).unwrap_err().to_string();
        assert!(e.contains("redis_ulr"), "{e}");
    }

    #[test]
    fn bad_duration_says_what_to_write() {
        let e = load("[calls]\nring_timeout = \"soon\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("ring_timeout") && e.contains("30s"), "{e}");
    }

    #[test]
    fn shipped_config_file_is_valid_and_complete() {
        let shipped = include_str!("../config/confer.toml");
        let c = load(shipped, &[]).unwrap();
        // Every key of the defaults appears in the documented file.
        let defaults = toml::to_string(&Config::default()).unwrap();
        let table: toml::Table = defaults.parse().unwrap();
        for (section, v) in table {
            for key in v.as_table().unwrap().keys() {
                assert!(
                    shipped.contains(&format!("{key} =")) || shipped.contains(&format!("# {key} =")),
                    "config/confer.toml does not document {section}.{key}"
                );
            }
        }
        assert_eq!(c.http.listen.port(), 8080);
    }
}

//! The command line (clap): `serve`, `token`.

use crate::auth::Claims;
use crate::config::{Config, Overrides};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The environment variables, after `--help` of `confer` and `confer serve`.
/// Every key of config/confer.toml is listed (a test checks it).
pub const ENV_HELP: &str = "\
Environment:
  Every config key can be set as CONFER_<SECTION>_<KEY>: the section of config/confer.toml, an
  underscore, the key, upper-cased; turn.allow_loopback_peers is CONFER_TURN_ALLOW_LOOPBACK_PEERS.
  Values are read as TOML (numbers, true/false, [\"a\", \"b\"]), anything else as a string:
    CONFER_HTTP_LISTEN=0.0.0.0:8080 CONFER_HTTP_CORS_ORIGINS='[\"https://app.example.com\"]' confer serve
  They override the file and flags override them. An unknown key of a known section
  (CONFER_HTTP_LISTN) is an error; a CONFER_* variable that names no section (CONFER_PORT,
  CONFER_SERVICE_HOST: what Kubernetes sets for a Service named confer) is ignored with a warning.

  [http]     CONFER_HTTP_LISTEN, CONFER_HTTP_TLS_CERT, CONFER_HTTP_TLS_KEY,
             CONFER_HTTP_TLS_SELF_SIGNED, CONFER_HTTP_CORS_ORIGINS
  [auth]     CONFER_AUTH_SECRET, CONFER_AUTH_ALLOW_GUESTS
  [media]    CONFER_MEDIA_LISTEN, CONFER_MEDIA_WORKERS, CONFER_MEDIA_PUBLIC_IP,
             CONFER_MEDIA_STUN_SERVERS, CONFER_MEDIA_BANDWIDTH_ESTIMATION
  [turn]     CONFER_TURN_ENABLED, CONFER_TURN_LISTEN, CONFER_TURN_TLS_LISTEN, CONFER_TURN_PUBLIC_HOST,
             CONFER_TURN_RELAY_IP, CONFER_TURN_REALM, CONFER_TURN_SECRET, CONFER_TURN_CREDENTIAL_TTL,
             CONFER_TURN_RELAY_PORT_MIN, CONFER_TURN_RELAY_PORT_MAX, CONFER_TURN_ALLOW_LOOPBACK_PEERS,
             CONFER_TURN_ALLOWED_PEER_RANGES, CONFER_TURN_USER_QUOTA
  [store]    CONFER_STORE_PATH
  [cluster]  CONFER_CLUSTER_REDIS_URL, CONFER_CLUSTER_NODE_ID, CONFER_CLUSTER_REGION
  [calls]    CONFER_CALLS_RING_TIMEOUT, CONFER_CALLS_RECONNECT_GRACE
  [rooms]    CONFER_ROOMS_MAX_PARTICIPANTS, CONFER_ROOMS_RESERVATION_TTL, CONFER_ROOMS_CHAT_RATE,
             CONFER_ROOMS_CHAT_BURST
  [ws]       CONFER_WS_PING_INTERVAL, CONFER_WS_IDLE_TIMEOUT, CONFER_WS_TOKEN_GRACE
  [metrics]  CONFER_METRICS_TOKEN
  [log]      CONFER_LOG_LEVEL, CONFER_LOG_JSON
  RUST_LOG   a tracing filter, overriding log.level: e.g. info,confer::http::access=off
             turns the access log off.";

#[derive(Parser, Debug)]
#[command(
    name = "confer",
    version,
    after_help = ENV_HELP,
    about = "Video and audio calls in one binary: signaling (REST + WebSocket), SFU, TURN, analytics, metrics.",
    long_about = "confer serves a signaling API (REST + WebSocket /rtc), forwards media for group rooms, runs a \
TURN server behind GET /ice-config and exports Prometheus metrics, with an embedded store.\n\n\
Start a development server with `confer serve --dev` and open http://127.0.0.1:8080/.\n\
Configuration: config/confer.toml (every key documented there), overridden by CONFER_<SECTION>_<KEY> \
environment variables and then by flags."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: HTTP + WebSocket, SFU media, TURN.
    #[command(after_help = ENV_HELP)]
    Serve(ServeArgs),
    /// Print a signed access token (uses the same config and data dir as `serve`).
    Token(TokenArgs),
    /// Load a running server: publishers and subscribers per room (webrtc-rs
    /// clients that connect and decrypt but do not decode), with a progress
    /// line and a JSON report (forwarded packets/s, loss, added latency,
    /// server CPU per forwarded packet, RSS). Tokens are signed with the same
    /// secret as `token`, so point --data/--config at the server's.
    Loadtest(LoadtestArgs),
}

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// The server's base URL; for a cluster, several, comma-separated: the
    /// clients are spread over them in turn (the rooms are created on the
    /// first), and the server figures add up every node's.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',', value_name = "URL[,URL...]")]
    pub url: Vec<String>,
    /// Rooms to create.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room (each sends one video track, and audio unless --no-audio).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Seconds measured (after every client is connected).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Video bitrate per publisher, kbit/s.
    #[arg(long, default_value_t = 1500)]
    pub video_kbps: u32,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Pace video like libwebrtc's sender: a frame's packets leave at this
    /// multiple of --video-kbps (its pacing factor is 2.5), audio unpaced.
    /// 0 sends each frame's packets back to back, a harsher burst than
    /// browsers make.
    #[arg(long, default_value_t = 2.5, value_name = "FACTOR")]
    pub pacing: f64,
    /// Publish video only.
    #[arg(long)]
    pub no_audio: bool,
    /// A meeting: every publisher also receives every other publisher
    /// (e.g. `--rooms 10 --publishers 4 --subscribers 0 --meeting`).
    #[arg(long)]
    pub meeting: bool,
    /// Load a Janus 1.x VideoRoom through its HTTP API instead of confer
    /// (e.g. `http://198.18.0.1:8088/janus`; one publisher per room); the
    /// same clients, for a side-by-side comparison (benches/janus_fanout.sh).
    #[arg(long, value_name = "URL")]
    pub janus: Option<String>,
    /// Measure the server's CPU and RSS from /proc/PID instead of its
    /// /metrics (required with --janus; use it for confer too to compare alike).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Publish video as three simulcast layers (rids q, h, f at 10 %, 30 %
    /// and 100 % of --video-kbps), as browsers do with LiveKit-style clients.
    #[arg(long)]
    pub simulcast: bool,
    /// With --simulcast: name the layers by `a=ssrc-group:SIM` in the offer
    /// and send no rid header extension (legacy simulcast, as Jitsi and
    /// munged-SDP clients send it).
    #[arg(long, requires = "simulcast")]
    pub sim_group: bool,
    /// Ceilings the subscribers ask for with track-subscribe, one each in
    /// turn (e.g. `high,medium,low`); none: no track-subscribe (full layer).
    #[arg(long, value_delimiter = ',', value_name = "QUALITY", value_parser = ["low", "medium", "high"])]
    pub ceilings: Vec<String>,
    /// Cap the first subscriber of each room at this many kbit/s (a token
    /// bucket with a 15 kB burst and a 60 ms queue in front of its socket)
    /// for the middle third of the run, and report how the server adapts
    /// (time to a lower layer, loss while capped, time to climb back).
    #[arg(long, value_name = "KBPS")]
    pub cap_kbps: Option<u32>,
    /// With --simulcast: every subscriber asks for the low layer a third of
    /// the way into the run and for the high one two thirds in (confer:
    /// track-subscribe; Janus: configure substream), and the report gives
    /// the time from each request to the first packet of that layer.
    #[arg(long, requires = "simulcast", conflicts_with_all = ["ceilings", "cap_kbps"])]
    pub switch: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML config file [default: config/confer.toml when it exists, else built-in defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory: the sled store and generated secrets (overrides store.path).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Development mode: enables guest tokens (POST /auth/guest) for the built-in web page.
    #[arg(long)]
    pub dev: bool,
    /// HTTP + WebSocket listen address, e.g. 127.0.0.1:8080 or 0.0.0.0:0 (overrides http.listen).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// A call on the local network: HTTP, media and TURN on every interface (their ports kept),
    /// the self-signed HTTPS certificate with every interface address in it, and the https://
    /// address to open on a phone printed at start. With --dev, guests can join at once.
    #[arg(long)]
    pub lan: bool,
    /// Log one JSON object per line (overrides log.json).
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// User id (the token's `sub`).
    #[arg(long, value_name = "ID")]
    pub user: String,
    /// Display name.
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// Grant admin rights (read any call, delete any room).
    #[arg(long)]
    pub admin: bool,
    /// A private room (id or name) this token may join; repeat for several.
    #[arg(long = "room", value_name = "ROOM")]
    pub rooms: Vec<String>,
}

impl ConfigArgs {
    /// The config, and the warning about `CONFER_*` variables it ignored
    /// (for the caller to give once its logging is set up).
    pub fn load(&self, http: Option<SocketAddr>, dev: bool, lan: bool) -> anyhow::Result<(Config, Option<String>)> {
        let o = Overrides { http_listen: http, data_dir: self.data.clone(), dev, lan };
        let loaded = Config::load(self.config.as_deref(), &o)?;
        let warning = loaded.ignored_env_warning();
        Ok((loaded.config, warning))
    }
}

impl TokenArgs {
    pub fn claims(&self) -> anyhow::Result<Claims> {
        if self.user.is_empty() {
            anyhow::bail!("--user must not be empty");
        }
        let mut c = Claims::new(self.user.as_str().into(), self.ttl);
        c.name = self.name.clone();
        c.admin = self.admin;
        c.rooms = self.rooms.clone();
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::ENV_HELP;

    /// Every key the documented config file shows, set or commented out,
    /// has its variable in `--help`, and `--help` lists no other (but the
    /// misspelt one it gives as an error).
    #[test]
    fn env_help_lists_every_documented_key() {
        let shipped = include_str!("../../config/confer.toml");
        let mut section = "";
        let mut documented = std::collections::BTreeSet::new();
        for line in shipped.lines() {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s;
                continue;
            }
            let line = line.strip_prefix("# ").unwrap_or(line);
            let Some((key, _)) = line.split_once(" = ") else { continue };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                continue;
            }
            let var = format!("CONFER_{}_{}", section, key).to_ascii_uppercase();
            assert!(ENV_HELP.contains(&var), "--help does not list {var}");
            documented.insert(var);
        }
        assert!(documented.len() > 30, "only {} keys found in config/confer.toml", documented.len());
        let sections: Vec<String> = documented.iter().map(|v| v.split('_').nth(1).unwrap().to_owned()).collect();
        for word in ENV_HELP.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let Some(rest) = word.strip_prefix("CONFER_") else { continue };
            let named = rest.split('_').next().unwrap();
            if sections.iter().any(|s| s == named) && word != "CONFER_HTTP_LISTN" {
                assert!(documented.contains(word), "--help lists {word}, which config/confer.toml does not document");
            }
        }
    }
}

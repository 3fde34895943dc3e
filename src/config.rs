//! Configuration: defaults, then `broker.toml` (or `--config`), then
//! environment variables such as `BROKER__AMQP__PORT=5673`. A key that is
//! not a field of [`Config`], in either, stops the start with its name.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub management: ListenerConfig,
    pub prometheus: ListenerConfig,
    pub resources: ResourceConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: nodes that share their definitions through a Raft group
/// (docs/cluster.md). Off: the node is alone, as a broker without the
/// section always was.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Nodes of a cluster with another name are refused.
    pub name: String,
    /// This node's name: unique in the cluster, the same across restarts
    /// (RabbitMQ's node name). Empty: `broker@<hostname>`.
    pub node_name: String,
    /// Node-to-node traffic (RabbitMQ's distribution port, 25672).
    pub listen: String,
    /// `host:port` other nodes reach this node at. Empty: this machine's
    /// hostname and the `listen` port.
    pub advertise: String,
    /// `host:port` of other nodes to form or join a cluster with.
    pub seed_nodes: Vec<String>,
    /// Shared by every node, proven (never sent) when nodes connect;
    /// RabbitMQ's Erlang cookie. Required when `enabled`.
    pub secret: String,
    /// Metadata changes between snapshots of the definitions (the Raft
    /// log before a snapshot is dropped; a node that fell further behind
    /// is sent the snapshot).
    pub snapshot_every: u64,
    /// Node-to-node traffic over TLS, with the `[tls]` section's
    /// `cert_file` and `key_file` (presented to peers both as server and
    /// as client) and `ca_file` (that peers' certificates are checked
    /// against; required). Independent of `tls.enabled` (AMQPS). Every
    /// node of a cluster must agree.
    pub tls: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            name: "broker".into(),
            node_name: String::new(),
            listen: "0.0.0.0:25672".into(),
            advertise: String::new(),
            seed_nodes: Vec::new(),
            secret: String::new(),
            snapshot_every: 5000,
            tls: false,
        }
    }
}

impl ClusterConfig {
    /// With `tls` on, the `[tls]` files node traffic uses: certificate
    /// chain, key and CA. `None` with `tls` off; an error naming the
    /// missing key when one is not set.
    pub fn tls_files<'a>(
        &self,
        tls: &'a TlsConfig,
    ) -> anyhow::Result<Option<(&'a Path, &'a Path, &'a Path)>> {
        if !self.tls {
            return Ok(None);
        }
        let missing = |key: &str, why: &str| {
            anyhow::anyhow!("cluster.tls is on but tls.{key} is not set ({why})")
        };
        if tls.cert_file.as_os_str().is_empty() {
            return Err(missing("cert_file", "this node's certificate chain"));
        }
        if tls.key_file.as_os_str().is_empty() {
            return Err(missing("key_file", "this node's private key"));
        }
        let Some(ca_file) = tls.ca_file.as_deref() else {
            return Err(missing(
                "ca_file",
                "the CA that signs every node's certificate, which peers are checked against",
            ));
        };
        Ok(Some((&tls.cert_file, &tls.key_file, ca_file)))
    }
}

/// AMQPS: AMQP over TLS on its own port (RabbitMQ: 5671), beside the
/// plain listener. Off unless `enabled`; the certificate and key are PEM
/// files.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct TlsConfig {
    pub enabled: bool,
    pub bind: String,
    pub port: u16,
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates are checked against.
    pub ca_file: Option<PathBuf>,
    /// Ask clients for a certificate and check it against `ca_file`
    /// (RabbitMQ's `ssl_options.verify = verify_peer`).
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that present no certificate
    /// (RabbitMQ's `ssl_options.fail_if_no_peer_cert`).
    pub fail_if_no_peer_cert: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            bind: "0.0.0.0".into(),
            port: 5671,
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            ca_file: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
        }
    }
}

/// Per-user and per-vhost limits, as RabbitMQ's `rabbitmqctl
/// set_user_limits` / `set_vhost_limits`. A missing value is unlimited;
/// 0 allows none.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Connections any one user may have open, unless `users` says otherwise.
    pub max_connections_per_user: Option<u32>,
    /// Limits of named users (`[limits.users.alice] max_connections = 5`).
    pub users: HashMap<String, UserLimits>,
    /// Limits of named vhosts (`[limits.vhosts."/"] max_connections = 100`).
    pub vhosts: HashMap<String, VhostLimits>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct UserLimits {
    pub max_connections: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct VhostLimits {
    pub max_connections: Option<u32>,
    pub max_queues: Option<u32>,
    /// Not a RabbitMQ vhost limit: exchanges beyond the predeclared ones.
    pub max_exchanges: Option<u32>,
}

impl LimitsConfig {
    /// How many connections `user` may have open (None: unlimited).
    pub fn user_max_connections(&self, user: &str) -> Option<u32> {
        self.users
            .get(user)
            .and_then(|l| l.max_connections)
            .or(self.max_connections_per_user)
    }

    /// How many connections `vhost` may have open (None: unlimited).
    pub fn vhost_max_connections(&self, vhost: &str) -> Option<u32> {
        self.vhosts.get(vhost).and_then(|l| l.max_connections)
    }

    /// How many queues `vhost` may hold (None: unlimited).
    pub fn vhost_max_queues(&self, vhost: &str) -> Option<u32> {
        self.vhosts.get(vhost).and_then(|l| l.max_queues)
    }

    /// How many exchanges `vhost` may declare (None: unlimited).
    pub fn vhost_max_exchanges(&self, vhost: &str) -> Option<u32> {
        self.vhosts.get(vhost).and_then(|l| l.max_exchanges)
    }
}

/// Resource alarms: past these, publishing connections are blocked.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ResourceConfig {
    /// Memory high watermark as a fraction of RAM (RabbitMQ: 0.4).
    pub memory_high_watermark: f64,
    /// An absolute memory high watermark in bytes; wins when set (> 0).
    pub memory_high_watermark_bytes: u64,
    /// Free disk space below which publishers are blocked (RabbitMQ: 50 MB).
    pub disk_free_limit_bytes: u64,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            memory_high_watermark: 0.4,
            memory_high_watermark_bytes: 0,
            disk_free_limit_bytes: 50_000_000,
        }
    }
}

/// An HTTP listener (management API, Prometheus metrics).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ListenerConfig {
    pub enabled: bool,
    pub bind: String,
    pub port: u16,
    /// HTTPS on this listener (`[management.tls]`, RabbitMQ's
    /// `management.ssl.*`).
    pub tls: HttpsConfig,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            enabled: true,
            bind: "0.0.0.0".into(),
            port: 0,
            tls: HttpsConfig::default(),
        }
    }
}

/// HTTPS for an HTTP listener: when `enabled`, the listener speaks only
/// HTTPS on its port. The files and checks are those of `[tls]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpsConfig {
    pub enabled: bool,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct AmqpConfig {
    pub bind: String,
    pub port: u16,
    /// Largest frame we accept and propose (RabbitMQ: 131072).
    pub frame_max: u32,
    /// Most channels a connection may have open (RabbitMQ: 2047).
    pub channel_max: u16,
    /// Proposed heartbeat in seconds; 0 disables.
    pub heartbeat: u16,
    /// Largest message body accepted (RabbitMQ 3.x: 128 MiB).
    pub max_message_size: u64,
    /// A client that has not finished the handshake by then is dropped.
    pub handshake_timeout_secs: u64,
    /// Connections open at once, over all users and vhosts (RabbitMQ's
    /// `connection_max`); None: unlimited.
    pub max_connections: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Size at which the message log starts a new segment (64 MiB).
    /// Compaction works a segment at a time: smaller segments give disk
    /// back sooner, at more files and more frequent copying.
    pub segment_size_bytes: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthConfig {
    pub default_user: String,
    pub default_pass: String,
    pub default_vhost: String,
    /// Users that may only connect from a loopback address.
    pub loopback_users: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `broker=debug`.
    pub level: String,
    /// `text` (coloured only when the output is a terminal) or `json`
    /// (one object per line, for log shippers).
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp: AmqpConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            management: ListenerConfig {
                port: 15672,
                ..Default::default()
            },
            prometheus: ListenerConfig {
                port: 15692,
                ..Default::default()
            },
            resources: ResourceConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            bind: "0.0.0.0".into(),
            port: 5672,
            frame_max: 131072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            handshake_timeout_secs: 10,
            max_connections: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            segment_size_bytes: crate::store::message_log::DEFAULT_SEGMENT_SIZE,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            default_user: "guest".into(),
            default_pass: "guest".into(),
            default_vhost: "/".into(),
            loopback_users: vec!["guest".into()],
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Loads `path` if it exists (it must exist when given explicitly),
    /// then applies `BROKER__SECTION__KEY` environment variables. A key
    /// the broker does not know, in the file or in a variable, is an
    /// error naming it: a typo must not silently fall back to a default.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let file = match path {
            Some(p) => config::File::from(p).required(true),
            None => config::File::with_name(DEFAULT_FILE).required(false),
        };
        let file_name = path.unwrap_or(Path::new(DEFAULT_FILE)).display();
        let known = known_keys();
        let mut unknown = Vec::new();
        unknown_keys(&known, &config::Source::collect(&file)?, "", &mut unknown);
        if !unknown.is_empty() {
            unknown.sort();
            let keys = if unknown.len() == 1 { "key" } else { "keys" };
            anyhow::bail!("unknown {keys} {} in {file_name}", unknown.join(", "));
        }
        check_environment(&known, std::env::vars_os())?;
        let builder = config::Config::builder().add_source(file).add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .list_separator(",")
                .with_list_parse_key("auth.loopback_users")
                .with_list_parse_key("cluster.seed_nodes")
                .try_parsing(true),
        );
        Ok(builder.build()?.try_deserialize()?)
    }
}

/// Read from the working directory when no `--config` is given.
const DEFAULT_FILE: &str = "broker.toml";
/// `BROKER__AMQP__PORT`: prefix, then sections and key, all split by `__`.
const ENV_PREFIX: &str = "BROKER";
const ENV_SEPARATOR: &str = "__";
/// In [`known_keys`], stands for any name of a table keyed by names
/// (`limits.users.NAME`, `limits.vhosts.NAME`).
const ANY_NAME: &str = "*";

/// Every key the broker reads, as a tree: the default configuration
/// serialized, with one entry of each table keyed by names under
/// [`ANY_NAME`]. Objects are tables; anything else is a value.
fn known_keys() -> serde_json::Value {
    let mut config = Config::default();
    config
        .limits
        .users
        .insert(ANY_NAME.into(), UserLimits::default());
    config
        .limits
        .vhosts
        .insert(ANY_NAME.into(), VhostLimits::default());
    serde_json::to_value(&config).expect("the configuration serializes")
}

/// What `known` (a table) has under `key`; `None` for an unknown key.
fn known_child<'a>(
    known: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<&'a serde_json::Value> {
    known.get(key).or_else(|| known.get(ANY_NAME))
}

/// Adds to `unknown` the dotted path of each key of `table` (found under
/// `prefix`) that `known` does not have. A value where a table is
/// expected, or the reverse, is left to deserialization to report.
fn unknown_keys(
    known: &serde_json::Value,
    table: &config::Map<String, config::Value>,
    prefix: &str,
    unknown: &mut Vec<String>,
) {
    let serde_json::Value::Object(known) = known else {
        return;
    };
    for (key, value) in table {
        let path = format!("{prefix}{}", quoted(key));
        match known_child(known, key) {
            None => unknown.push(format!("`{path}`")),
            Some(child) => {
                if let config::ValueKind::Table(table) = &value.kind {
                    unknown_keys(child, table, &format!("{path}."), unknown);
                }
            }
        }
    }
}

/// A key as TOML writes it: bare when it can be, else quoted (`"/"`).
fn quoted(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// Refuses a `BROKER__…` variable that names no known key. Matched as the
/// `config` crate matches them: case-insensitively, split at `__`.
fn check_environment(
    known: &serde_json::Value,
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> anyhow::Result<()> {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
    let mut unknown = Vec::new();
    for (name, _) in vars {
        let Some(name) = name.to_str() else { continue };
        let lower = name.to_lowercase();
        let Some(key) = lower.strip_prefix(&prefix) else {
            continue;
        };
        let mut at = known;
        let found = key.split(ENV_SEPARATOR).all(|segment| {
            match at {
                serde_json::Value::Object(table) => match known_child(table, segment) {
                    Some(child) => {
                        at = child;
                        true
                    }
                    None => false,
                },
                // Deeper than a value: no such key.
                _ => false,
            }
        });
        // A section alone (`BROKER__AMQP`) sets no key either.
        if !found || at.is_object() {
            unknown.push(name.to_string());
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        anyhow::bail!(
            "unknown configuration key in environment variable {} (expected \
             {ENV_PREFIX}{ENV_SEPARATOR}<SECTION>{ENV_SEPARATOR}<KEY>, e.g. BROKER__AMQP__PORT)",
            unknown.join(", ")
        );
    }
    Ok(())
}

impl Config {
    /// The node name shown to clients, RabbitMQ style (`broker@host`).
    /// The cluster's name (`cluster.name`); a node alone is a cluster
    /// named after itself, as RabbitMQ's default `cluster_name`.
    pub fn cluster_name(&self) -> String {
        if self.cluster.enabled {
            return self.cluster.name.clone();
        }
        self.node_name()
    }

    /// This node's name (`cluster.node_name`, or `broker@<hostname>`).
    pub fn node_name(&self) -> String {
        if !self.cluster.node_name.is_empty() {
            return self.cluster.node_name.clone();
        }
        format!("broker@{}", hostname())
    }
}

/// This machine's name, as `/etc/hostname` has it.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

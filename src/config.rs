//! Configuration: defaults, then `broker.toml` (or `--config`), then
//! environment variables such as `BROKER__AMQP__PORT=5673`.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
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
}

/// AMQPS: AMQP over TLS on its own port (RabbitMQ: 5671), beside the
/// plain listener. Off unless `enabled`; the certificate and key are PEM
/// files.
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Connections any one user may have open, unless `users` says otherwise.
    pub max_connections_per_user: Option<u32>,
    /// Limits of named users (`[limits.users.alice] max_connections = 5`).
    pub users: HashMap<String, UserLimits>,
    /// Limits of named vhosts (`[limits.vhosts."/"] max_connections = 100`).
    pub vhosts: HashMap<String, VhostLimits>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserLimits {
    pub max_connections: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct HttpsConfig {
    pub enabled: bool,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
}

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Size at which the message log starts a new segment (64 MiB).
    /// Compaction works a segment at a time: smaller segments give disk
    /// back sooner, at more files and more frequent copying.
    pub segment_size_bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub default_user: String,
    pub default_pass: String,
    pub default_vhost: String,
    /// Users that may only connect from a loopback address.
    pub loopback_users: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `broker=debug`.
    pub level: String,
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
        }
    }
}

impl Config {
    /// Loads `path` if it exists (it must exist when given explicitly),
    /// then applies `BROKER__SECTION__KEY` environment variables.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut builder = config::Config::builder();
        match path {
            Some(p) => builder = builder.add_source(config::File::from(p).required(true)),
            None => {
                builder = builder.add_source(config::File::with_name("broker.toml").required(false))
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BROKER")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.loopback_users")
                .try_parsing(true),
        );
        Ok(builder.build()?.try_deserialize()?)
    }

    /// Unreadable `[management.tls]` files are a start-up error, as those
    /// of `[tls]` are, rather than an API that silently never listens.
    /// (Checked by the server only: the user CLI needs no key.)
    pub fn check_https(&self) -> anyhow::Result<()> {
        let tls = &self.management.tls;
        if self.management.enabled && tls.enabled {
            crate::tls::build_acceptor(&tls.certificates("management.tls"))?;
        }
        Ok(())
    }
}

impl Config {
    /// The node name shown to clients, RabbitMQ style (`broker@host`).
    pub fn cluster_name(&self) -> String {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("broker@{host}")
    }
}

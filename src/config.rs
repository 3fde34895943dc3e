//! Configuration: defaults, then `broker.toml` (or `--config`), then
//! environment variables such as `BROKER__AMQP__PORT=5673`.

use serde::Deserialize;
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
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            enabled: true,
            bind: "0.0.0.0".into(),
            port: 0,
        }
    }
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
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
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
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
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

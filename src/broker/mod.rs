//! The broker's logic: vhosts, exchanges, queues, consumers. No sockets.

pub mod alarms;
pub mod arguments;
pub mod dedup;
pub mod exchange;
pub mod message;
pub mod names;
pub mod queue;
pub mod registry;
pub mod users;
pub mod vhost;

use crate::config::Config;
use crate::store::{Recovered, Store};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use users::{Permission, Users};
use vhost::VHost;

pub struct Broker {
    pub config: Config,
    pub store: Option<Arc<Store>>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    pub users: RwLock<Users>,
    /// Live connections, for management and metrics.
    pub registry: registry::Registry,
    /// Memory and disk alarms that block publishers.
    pub alarms: Arc<alarms::Alarms>,
    next_connection_id: AtomicU64,
}

impl Broker {
    /// A broker over `store` (`None`: nothing persists, for tests of the
    /// logic alone).
    pub fn new(config: Config, store: Option<Arc<Store>>) -> Arc<Self> {
        let mut users = Users::default();
        let default_user = &config.auth.default_user;
        let default_vhost = &config.auth.default_vhost;
        users.add(default_user, &config.auth.default_pass, &["administrator"]);
        users.set_permission(
            default_user,
            default_vhost,
            Permission {
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            },
        );
        let resources = &config.resources;
        let memory_limit = match resources.memory_high_watermark_bytes {
            0 => alarms::Alarms::memory_limit_for(resources.memory_high_watermark),
            bytes => bytes,
        };
        let alarms = alarms::Alarms::new(
            memory_limit,
            resources.disk_free_limit_bytes,
            &config.storage.data_dir,
        );
        let mut vhosts = HashMap::new();
        vhosts.insert(
            default_vhost.clone(),
            VHost::new(default_vhost, store.clone()),
        );
        Arc::new(Broker {
            config,
            store,
            registry: Default::default(),
            alarms,
            vhosts: RwLock::new(vhosts),
            users: RwLock::new(users),
            next_connection_id: AtomicU64::new(1),
        })
    }

    /// Rebuilds durable definitions from the catalog and puts recovered
    /// messages back into their queues, in their original order.
    pub fn restore(&self, recovered: Recovered) {
        let Some(store) = &self.store else { return };
        let (exchanges, queues, bindings) = (
            store.catalog.exchanges(),
            store.catalog.queues(),
            store.catalog.bindings(),
        );
        for r in &exchanges {
            if let Some(v) = self.vhost(&r.vhost) {
                v.restore_exchange(r);
            }
        }
        for r in &queues {
            if let Some(v) = self.vhost(&r.vhost) {
                v.restore_queue(r);
            }
        }
        for r in &bindings {
            if let Some(v) = self.vhost(&r.vhost) {
                v.restore_binding(r);
            }
        }
        let count = recovered.messages.len();
        for message in recovered.messages {
            match self.vhost(&message.vhost) {
                Some(v) => v.restore_message(message),
                None => {
                    tracing::warn!(vhost = %message.vhost, "stored message for an unknown vhost dropped")
                }
            }
        }
        tracing::info!(
            exchanges = exchanges.len(),
            queues = queues.len(),
            bindings = bindings.len(),
            messages = count,
            "restored durable state"
        );
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }
}

//! The broker's logic: vhosts, exchanges, queues, consumers. No sockets.

pub mod arguments;
pub mod exchange;
pub mod message;
pub mod names;
pub mod queue;
pub mod users;
pub mod vhost;

use crate::config::Config;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use users::{Permission, Users};
use vhost::VHost;

pub struct Broker {
    pub config: Config,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    pub users: RwLock<Users>,
    next_connection_id: AtomicU64,
}

impl Broker {
    pub fn new(config: Config) -> Arc<Self> {
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
        let mut vhosts = HashMap::new();
        vhosts.insert(default_vhost.clone(), VHost::new(default_vhost));
        Arc::new(Broker {
            config,
            vhosts: RwLock::new(vhosts),
            users: RwLock::new(users),
            next_connection_id: AtomicU64::new(1),
        })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }
}

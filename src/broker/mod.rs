//! The broker's logic: vhosts, exchanges, queues, consumers. No sockets.

pub mod access;
pub mod alarms;
pub mod arguments;
pub mod dedup;
pub mod exchange;
pub mod forward;
pub mod message;
pub mod metadata;
pub mod names;
pub mod node_calls;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod relay;
pub mod super_stream;
pub mod users;
pub mod vhost;

use crate::config::Config;
use crate::protocol::AmqpError;
use crate::store::catalog::{PermissionRecord, UserRecord, VhostRecord};
use crate::store::{Recovered, Store};
use metadata::Change;
use parking_lot::RwLock;
use queue::paging::PageBudget;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use users::{Permission, User, Users};
use vhost::VHost;

/// Longest name (queue, exchange, vhost) or routing key: AMQP's short
/// string. The message log stores them as short strings, so a longer one
/// would be cut there and a stored message would not find its queue again.
pub const MAX_NAME_BYTES: usize = 255;

/// Refuses a name longer than `MAX_NAME_BYTES` (possible only off AMQP:
/// the HTTP API, names made up internally). The name itself is not quoted.
pub fn check_name_length(kind: &str, name: &str) -> Result<(), crate::protocol::AmqpError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(crate::protocol::AmqpError::precondition_failed(format!(
            "{kind} is too long: {} bytes, at most {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(())
}

/// Runs `future` to completion from synchronous broker code; `None` if
/// no runtime could be had to wait on.
pub(crate) fn block_on<F: std::future::Future + Send>(future: F) -> Option<F::Output>
where
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            Some(tokio::task::block_in_place(|| handle.block_on(future)))
        }
        // A current-thread runtime cannot block in place: wait on a thread
        // of its own (the cluster's tasks run on the server's runtime).
        _ => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()
                        .map(|rt| rt.block_on(future))
                })
                .join()
                .ok()
                .flatten()
        }),
    }
}

/// Full access, as the default user gets on the default vhost.
fn full_permission() -> Permission {
    Permission {
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

fn user_record(u: &User) -> UserRecord {
    UserRecord {
        name: u.name.clone(),
        password_hash: u.password_hash.clone(),
        hashing_algorithm: u.hashing_algorithm.clone(),
        tags: u.tags.clone(),
    }
}

fn permission_record(user: &str, vhost: &str, p: &Permission) -> PermissionRecord {
    PermissionRecord {
        user: user.to_string(),
        vhost: vhost.to_string(),
        configure: p.configure.clone(),
        write: p.write.clone(),
        read: p.read.clone(),
    }
}

pub struct Broker {
    pub config: Config,
    pub store: Option<Arc<Store>>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// Description, tags and default queue type of each vhost.
    vhost_meta: RwLock<HashMap<String, VhostRecord>>,
    pub users: RwLock<Users>,
    /// Live connections, for management and metrics.
    pub registry: registry::Registry,
    /// Memory and disk alarms that block publishers.
    pub alarms: Arc<alarms::Alarms>,
    /// Paging of all its queues: page directory, in-memory bounds and use.
    pub pages: Arc<PageBudget>,
    /// Whether definitions go through a cluster's metadata group.
    pub replication: Arc<metadata::Replication>,
    next_connection_id: AtomicU64,
}

impl Broker {
    /// A broker over `store` (`None`: nothing persists, for tests of the
    /// logic alone), paging into a directory of its own in the system temp
    /// directory.
    pub fn new(config: Config, store: Option<Arc<Store>>) -> Arc<Self> {
        Self::with_pages(config, store, Arc::default())
    }

    /// A broker over `store` whose queues page as `pages` says.
    pub fn with_pages(
        config: Config,
        store: Option<Arc<Store>>,
        pages: Arc<PageBudget>,
    ) -> Arc<Self> {
        let (users, vhost_meta) = Self::initial_users(&config, store.as_deref());
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
        if let Some(store) = &store {
            alarms.watch_store(store.log.failures().failing());
        }
        let replication = Arc::<metadata::Replication>::default();
        if config.cluster.enabled {
            replication.set_node(config.node_name());
        }
        let vhosts = vhost_meta
            .keys()
            .map(|name| {
                let vhost = VHost::new(name, store.clone(), pages.clone(), replication.clone());
                vhost.set_max_queues(config.limits.vhost_max_queues(name));
                vhost.set_max_exchanges(config.limits.vhost_max_exchanges(name));
                (name.clone(), vhost)
            })
            .collect();
        Arc::new(Broker {
            config,
            store,
            registry: Default::default(),
            alarms,
            pages,
            vhosts: RwLock::new(vhosts),
            vhost_meta: RwLock::new(vhost_meta),
            users: RwLock::new(users),
            replication,
            next_connection_id: AtomicU64::new(1),
        })
    }

    /// Users, permissions and vhosts from the catalog; on a fresh data dir
    /// (no users stored) the configured default user with full access to
    /// the default vhost, which are stored at once. So deleting the default
    /// user or vhost lasts across restarts, as in RabbitMQ.
    fn initial_users(
        config: &Config,
        store: Option<&Store>,
    ) -> (Users, HashMap<String, VhostRecord>) {
        let mut users = Users::default();
        let mut vhosts = HashMap::new();
        if let Some(store) = store {
            let stored = store.catalog.users();
            if !stored.is_empty() {
                for r in stored {
                    users.put(User {
                        name: r.name,
                        password_hash: r.password_hash,
                        hashing_algorithm: r.hashing_algorithm,
                        tags: r.tags,
                    });
                }
                for r in store.catalog.vhosts() {
                    vhosts.insert(r.name.clone(), r);
                }
                for r in store.catalog.permissions() {
                    users.set_permission(
                        &r.user,
                        &r.vhost,
                        Permission {
                            configure: r.configure,
                            write: r.write,
                            read: r.read,
                        },
                    );
                }
                return (users, vhosts);
            }
        }
        let auth = &config.auth;
        users.add(&auth.default_user, &auth.default_pass, &["administrator"]);
        users.set_permission(&auth.default_user, &auth.default_vhost, full_permission());
        let vhost = VhostRecord {
            name: auth.default_vhost.clone(),
            description: "Default virtual host".into(),
            ..Default::default()
        };
        if let Some(store) = store {
            store.catalog.put_vhost(&vhost);
            if let Some(p) = users.permission(&auth.default_user, &auth.default_vhost) {
                store.catalog.put_permission(&permission_record(
                    &auth.default_user,
                    &auth.default_vhost,
                    p,
                ));
            }
            // The user last: its presence marks the catalog as initialised.
            if let Some(u) = users.get(&auth.default_user) {
                store.catalog.put_user(&user_record(u));
            }
        }
        vhosts.insert(vhost.name.clone(), vhost);
        (users, vhosts)
    }

    /// Rebuilds durable definitions from the catalog and puts recovered
    /// messages back into their queues, in their original order.
    pub fn restore(&self, recovered: Recovered) {
        let Some(store) = &self.store else { return };
        let started = std::time::Instant::now();
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
                    // Its vhost was deleted: record the removal, or it is
                    // found again at every start and comes back into a
                    // same-named queue of a vhost created again later.
                    tracing::warn!(vhost = %message.vhost, "stored message for an unknown vhost dropped");
                    for (queue, _) in &message.queues {
                        store.log.remove(message.id, &message.vhost, queue);
                    }
                }
            }
        }
        tracing::info!(
            exchanges = exchanges.len(),
            queues = queues.len(),
            bindings = bindings.len(),
            messages = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
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

    // ---- vhosts, users and permissions (management API) ----

    /// The stored description and tags of a vhost.
    pub fn vhost_record(&self, name: &str) -> Option<VhostRecord> {
        self.vhost_meta.read().get(name).cloned()
    }

    /// Creates a vhost (usable at once) or updates its metadata; stored
    /// (and on a cluster, committed) before it returns. True if it is new.
    pub fn put_vhost(&self, record: VhostRecord) -> Result<bool, AmqpError> {
        let what = format!("declare vhost '{}'", record.name);
        self.change(Change::PutVhost(record), &what)
    }

    /// Deletes a vhost: its connections are closed with 320, its queues
    /// (with their messages), exchanges, bindings, policies and permissions
    /// go. False if there was no such vhost.
    pub fn delete_vhost(&self, name: &str) -> Result<bool, AmqpError> {
        let what = format!("delete vhost '{name}'");
        self.change(
            Change::DeleteVhost {
                name: name.to_string(),
            },
            &what,
        )
    }

    /// Adds or replaces a user (stored before it returns); true if new.
    pub fn put_user(&self, user: User) -> Result<bool, AmqpError> {
        let what = format!("put user '{}'", user.name);
        self.change(Change::PutUser(user), &what)
    }

    /// Deletes a user with its permissions and closes its connections.
    pub fn delete_user(&self, name: &str) -> Result<bool, AmqpError> {
        let what = format!("delete user '{name}'");
        self.change(
            Change::DeleteUser {
                name: name.to_string(),
            },
            &what,
        )
    }

    /// Sets a user's permission on a vhost (stored before it returns);
    /// true if the user had none there before.
    pub fn set_permission(
        &self,
        user: &str,
        vhost: &str,
        permission: Permission,
    ) -> Result<bool, AmqpError> {
        let what = format!("set permissions of user '{user}' in vhost '{vhost}'");
        let change = Change::SetPermission {
            user: user.to_string(),
            vhost: vhost.to_string(),
            permission,
        };
        self.change(change, &what)
    }

    /// Removes a user's permission on a vhost; false if it had none.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> Result<bool, AmqpError> {
        let what = format!("clear permissions of user '{user}' in vhost '{vhost}'");
        let change = Change::ClearPermission {
            user: user.to_string(),
            vhost: vhost.to_string(),
        };
        self.change(change, &what)
    }

    /// Makes `change` here, or on a cluster commits it (and so makes it on
    /// every node); true if it made something new.
    fn change(&self, change: Change, what: &str) -> Result<bool, AmqpError> {
        self.replication
            .commit(&change, what, || change.clone().apply(self).into_result())
    }

    // The local halves, applied on every node (`metadata::Change::apply`).

    pub(crate) fn apply_put_vhost(&self, record: VhostRecord) -> bool {
        if let Some(store) = &self.store {
            store.catalog.put_vhost(&record);
        }
        let name = record.name.clone();
        self.vhost_meta.write().insert(name.clone(), record);
        let mut vhosts = self.vhosts.write();
        if vhosts.contains_key(&name) {
            return false;
        }
        let vhost = VHost::new(
            &name,
            self.store.clone(),
            self.pages.clone(),
            self.replication.clone(),
        );
        vhost.set_max_queues(self.config.limits.vhost_max_queues(&name));
        vhost.set_max_exchanges(self.config.limits.vhost_max_exchanges(&name));
        vhosts.insert(name.clone(), vhost);
        true
    }

    pub(crate) fn apply_delete_vhost(&self, name: &str) -> bool {
        let Some(vhost) = self.vhosts.write().remove(name) else {
            return false;
        };
        self.vhost_meta.write().remove(name);
        self.users.write().clear_vhost(name);
        for c in self.registry.connections() {
            if c.vhost == name {
                c.request_close(&format!("vhost '{name}' is deleted"));
            }
        }
        for q in vhost.queues() {
            vhost.remove_queue(&q);
        }
        for x in vhost.exchanges() {
            if !x.is_predeclared() {
                let _ = vhost.apply_delete_exchange(&x.name, false);
            }
        }
        // Its stored policies go too, or a vhost created again under the
        // same name would find them.
        for p in vhost.policies() {
            vhost.apply_delete_policy(p.name());
        }
        if let Some(store) = &self.store {
            store.catalog.delete_vhost(name);
        }
        true
    }

    pub(crate) fn apply_put_user(&self, user: User) -> bool {
        if let Some(store) = &self.store {
            store.catalog.put_user(&user_record(&user));
        }
        self.users.write().put(user)
    }

    pub(crate) fn apply_delete_user(&self, name: &str) -> bool {
        if self.users.write().remove(name).is_none() {
            return false;
        }
        if let Some(store) = &self.store {
            store.catalog.delete_user(name);
        }
        for c in self.registry.connections() {
            if c.user == name {
                c.request_close(&format!("user '{name}' is deleted"));
            }
        }
        true
    }

    pub(crate) fn apply_set_permission(
        &self,
        user: &str,
        vhost: &str,
        permission: Permission,
    ) -> bool {
        if let Some(store) = &self.store {
            store
                .catalog
                .put_permission(&permission_record(user, vhost, &permission));
        }
        let mut users = self.users.write();
        let new = users.permission(user, vhost).is_none();
        users.set_permission(user, vhost, permission);
        new
    }

    pub(crate) fn apply_clear_permission(&self, user: &str, vhost: &str) -> bool {
        if !self.users.write().clear_permission(user, vhost) {
            return false;
        }
        if let Some(store) = &self.store {
            store.catalog.delete_permission(user, vhost);
        }
        true
    }

    /// Full permissions for `user` on `vhost` (a vhost created through
    /// the API is opened to its creator, as RabbitMQ does).
    pub fn grant_full(&self, user: &str, vhost: &str) {
        if self.users.read().get(user).is_some() {
            if let Err(e) = self.set_permission(user, vhost, full_permission()) {
                tracing::warn!("cannot open vhost '{vhost}' to '{user}': {}", e.text);
            }
        }
    }
}

//! Durable definitions in sled: exchanges, queues and bindings, and the
//! users, vhosts and permissions changed through the management API; read
//! back at start.
//!
//! A change is applied to sled at once and flushed to disk by the
//! catalog's own thread, which takes every change made meanwhile into one
//! flush. Whoever promises durability waits for it: a channel sends its
//! declare-ok / delete-ok / bind-ok once `flushed` has passed the changes
//! the method made (`written`), the HTTP API answers a change likewise. So
//! no async worker (and no lock) waits for the disk.

use crate::protocol::FieldTable;
use anyhow::Context;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExchangeRecord {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueRecord {
    pub vhost: String,
    pub name: String,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BindingRecord {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_is_queue: bool,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// A user as stored: RabbitMQ's password hash, never the password.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VhostRecord {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub default_queue_type: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PermissionRecord {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

pub struct Catalog {
    flusher: Arc<Flusher>,
    thread: Option<std::thread::JoinHandle<()>>,
    db: sled::Db,
    exchanges: sled::Tree,
    queues: sled::Tree,
    bindings: sled::Tree,
    users: sled::Tree,
    vhosts: sled::Tree,
    permissions: sled::Tree,
}

fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

impl BindingRecord {
    fn key(&self) -> Vec<u8> {
        let args = serde_json::to_string(&self.arguments).unwrap_or_default();
        let kind = if self.destination_is_queue { "q" } else { "e" };
        key(&[
            &self.vhost,
            &self.source,
            kind,
            &self.destination,
            &self.routing_key,
            &args,
        ])
    }
}

/// The flushing thread's side: how many changes were made, how far the
/// flushes got.
struct Flusher {
    written: AtomicU64,
    /// Highest change asked to be flushed; whether the catalog closes.
    wanted: Mutex<(u64, bool)>,
    wake: Condvar,
    flushed: watch::Sender<u64>,
}

impl Flusher {
    fn run(&self, db: &sled::Db) {
        loop {
            let target = {
                let mut wanted = self.wanted.lock();
                while wanted.0 <= *self.flushed.borrow() && !wanted.1 {
                    self.wake.wait(&mut wanted);
                }
                if wanted.1 && wanted.0 <= *self.flushed.borrow() {
                    return;
                }
                self.written.load(Ordering::Acquire)
            };
            if let Err(e) = db.flush() {
                tracing::error!("catalog flush failed: {e}");
            }
            self.flushed.send_replace(target);
        }
    }
}

impl Catalog {
    pub fn open(path: &Path) -> anyhow::Result<Catalog> {
        let db =
            sled::open(path).with_context(|| format!("cannot open catalog {}", path.display()))?;
        let flusher = Arc::new(Flusher {
            written: AtomicU64::new(0),
            wanted: Mutex::new((0, false)),
            wake: Condvar::new(),
            flushed: watch::channel(0).0,
        });
        let thread = std::thread::Builder::new()
            .name("catalog-flush".into())
            .spawn({
                let flusher = flusher.clone();
                let db = db.clone();
                move || flusher.run(&db)
            })
            .context("cannot start the catalog flusher")?;
        Ok(Catalog {
            flusher,
            thread: Some(thread),
            exchanges: db.open_tree("exchanges")?,
            queues: db.open_tree("queues")?,
            bindings: db.open_tree("bindings")?,
            users: db.open_tree("users")?,
            vhosts: db.open_tree("vhosts")?,
            permissions: db.open_tree("permissions")?,
            db,
        })
    }

    /// A tree beside the definitions, for records written often and flushed
    /// by sled's own timer (stream consumer offsets).
    pub fn tree(&self, name: &str) -> anyhow::Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, k: Vec<u8>, value: &T) {
        match serde_json::to_vec(value) {
            Ok(bytes) => {
                if let Err(e) = tree.insert(k, bytes) {
                    tracing::error!("catalog write failed: {e}");
                }
            }
            Err(e) => tracing::error!("catalog record not encodable: {e}"),
        }
        self.note_change();
    }

    fn remove(&self, tree: &sled::Tree, k: Vec<u8>) {
        if let Err(e) = tree.remove(k) {
            tracing::error!("catalog delete failed: {e}");
        }
        self.note_change();
    }

    /// Waits for the disk. On a worker of tokio's multi-thread runtime the
    /// worker's other tasks (other connections) move to another thread
    /// meanwhile, instead of waiting for this fsync behind it.
    /// Counts a change and asks the thread to flush it (also for trees
    /// written directly, see `tree`).
    pub fn note_change(&self) {
        let seq = self.flusher.written.fetch_add(1, Ordering::AcqRel) + 1;
        let mut wanted = self.flusher.wanted.lock();
        wanted.0 = wanted.0.max(seq);
        self.flusher.wake.notify_one();
    }

    /// How many changes were made so far (a change is durable once
    /// `flushed` reaches its number).
    pub fn written(&self) -> u64 {
        self.flusher.written.load(Ordering::Acquire)
    }

    /// Up to which change the catalog is on disk.
    pub fn flushed(&self) -> watch::Receiver<u64> {
        self.flusher.flushed.subscribe()
    }

    pub fn flushed_now(&self) -> u64 {
        *self.flusher.flushed.borrow()
    }

    /// Waits until every change made so far is on disk.
    pub async fn wait_flushed(&self) {
        let seq = self.written();
        let mut flushed = self.flushed();
        let _ = flushed.wait_for(|f| *f >= seq).await;
    }

    fn all<T: for<'de> Deserialize<'de>>(tree: &sled::Tree) -> Vec<T> {
        tree.iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| match serde_json::from_slice(&v) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::error!("skipping unreadable catalog record: {e}");
                    None
                }
            })
            .collect()
    }

    pub fn put_exchange(&self, r: &ExchangeRecord) {
        self.put(&self.exchanges, key(&[&r.vhost, &r.name]), r);
    }

    pub fn delete_exchange(&self, vhost: &str, name: &str) {
        self.remove(&self.exchanges, key(&[vhost, name]));
    }

    pub fn put_queue(&self, r: &QueueRecord) {
        self.put(&self.queues, key(&[&r.vhost, &r.name]), r);
    }

    pub fn delete_queue(&self, vhost: &str, name: &str) {
        self.remove(&self.queues, key(&[vhost, name]));
    }

    pub fn put_binding(&self, r: &BindingRecord) {
        self.put(&self.bindings, r.key(), r);
    }

    pub fn delete_binding(&self, r: &BindingRecord) {
        self.remove(&self.bindings, r.key());
    }

    /// Removes every binding with `name` as source or destination.
    pub fn delete_bindings_touching(&self, vhost: &str, name: &str, is_queue: bool) {
        for binding in self.bindings() {
            let as_source = !is_queue && binding.source == name;
            let as_destination =
                binding.destination == name && binding.destination_is_queue == is_queue;
            if binding.vhost == vhost && (as_source || as_destination) {
                let _ = self.bindings.remove(binding.key());
            }
        }
        self.note_change();
    }

    pub fn exchanges(&self) -> Vec<ExchangeRecord> {
        Self::all(&self.exchanges)
    }

    pub fn queues(&self) -> Vec<QueueRecord> {
        Self::all(&self.queues)
    }

    pub fn bindings(&self) -> Vec<BindingRecord> {
        Self::all(&self.bindings)
    }

    // ---- users, vhosts, permissions ----

    pub fn put_user(&self, r: &UserRecord) {
        self.put(&self.users, key(&[&r.name]), r);
    }

    /// Removes a user and its permissions.
    pub fn delete_user(&self, name: &str) {
        for p in self.permissions() {
            if p.user == name {
                let _ = self.permissions.remove(key(&[&p.user, &p.vhost]));
            }
        }
        self.remove(&self.users, key(&[name]));
    }

    pub fn users(&self) -> Vec<UserRecord> {
        Self::all(&self.users)
    }

    pub fn put_vhost(&self, r: &VhostRecord) {
        self.put(&self.vhosts, key(&[&r.name]), r);
    }

    /// Removes a vhost with its permissions and every exchange, queue and
    /// binding stored for it.
    pub fn delete_vhost(&self, name: &str) {
        for p in self.permissions() {
            if p.vhost == name {
                let _ = self.permissions.remove(key(&[&p.user, &p.vhost]));
            }
        }
        for e in self.exchanges() {
            if e.vhost == name {
                let _ = self.exchanges.remove(key(&[&e.vhost, &e.name]));
            }
        }
        for q in self.queues() {
            if q.vhost == name {
                let _ = self.queues.remove(key(&[&q.vhost, &q.name]));
            }
        }
        for b in self.bindings() {
            if b.vhost == name {
                let _ = self.bindings.remove(b.key());
            }
        }
        self.remove(&self.vhosts, key(&[name]));
    }

    pub fn vhosts(&self) -> Vec<VhostRecord> {
        Self::all(&self.vhosts)
    }

    pub fn put_permission(&self, r: &PermissionRecord) {
        self.put(&self.permissions, key(&[&r.user, &r.vhost]), r);
    }

    pub fn delete_permission(&self, user: &str, vhost: &str) {
        self.remove(&self.permissions, key(&[user, vhost]));
    }

    pub fn permissions(&self) -> Vec<PermissionRecord> {
        Self::all(&self.permissions)
    }
}

impl Drop for Catalog {
    /// The thread flushes what is left, then ends.
    fn drop(&mut self) {
        self.flusher.wanted.lock().1 = true;
        self.flusher.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.db.flush() {
            tracing::error!("catalog flush failed: {e}");
        }
    }
}

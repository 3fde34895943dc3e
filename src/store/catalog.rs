//! Durable definitions in sled: exchanges, queues and bindings, and the
//! users, vhosts and permissions changed through the management API; read
//! back at start.
//!
//! A change is applied to sled at once and its record appended to the
//! catalog's write-ahead log (`catalog_wal`) by the catalog's own thread,
//! which takes every change made meanwhile into one write and one sync.
//! sled itself is flushed only at a checkpoint, every few seconds. Whoever
//! promises durability waits for the log: a channel sends its declare-ok /
//! delete-ok / bind-ok once `flushed` has passed the changes the method
//! made (`written`), the HTTP API answers a change likewise. So no async
//! worker (and no lock) waits for the disk.

use super::catalog_wal::{self, Wal};
use crate::protocol::FieldTable;
use anyhow::Context;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A checkpoint (sled flushed, the log started afresh) once the log holds
/// this much...
const CHECKPOINT_BYTES: u64 = 4 << 20;
/// ...or its oldest record is this old.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

const EXCHANGES: &str = "exchanges";
const QUEUES: &str = "queues";
const BINDINGS: &str = "bindings";
const USERS: &str = "users";
const VHOSTS: &str = "vhosts";
const PERMISSIONS: &str = "permissions";

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
    /// On a cluster, the node the queue lives on (the others hold its
    /// definition only); absent on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// On a cluster, transient and exclusive queues are recorded too (every
    /// node knows them); their own node drops them at its next start.
    #[serde(default = "durable_by_default")]
    pub durable: bool,
    #[serde(default)]
    pub exclusive: bool,
}

fn durable_by_default() -> bool {
    true
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

/// The catalog thread's side: the changes not yet handed to the log, how
/// far the log's syncs got.
struct Flusher {
    /// How many changes were made (changed under `state`'s lock).
    written: AtomicU64,
    state: Mutex<State>,
    wake: Condvar,
    flushed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// Encoded records of the changes up to `seq` not yet taken by the
    /// thread.
    pending: Vec<u8>,
    /// The last change in `pending` (or taken before).
    seq: u64,
    /// A tree was written directly and `note_change`d: the next group
    /// flushes sled too.
    flush_sled: bool,
    closing: bool,
}

/// What the thread takes from `State` for one group commit.
struct Group {
    records: Vec<u8>,
    seq: u64,
    flush_sled: bool,
}

impl Flusher {
    /// The next group to commit; `None` when the catalog closes and
    /// everything is flushed; an empty group when a checkpoint is due.
    fn next_group(&self, spare: Vec<u8>, log_since: Option<Instant>) -> Option<Group> {
        let mut state = self.state.lock();
        loop {
            let flushed = *self.flushed.borrow();
            if state.seq > flushed || state.flush_sled {
                break;
            }
            if state.closing {
                return None;
            }
            match log_since {
                Some(since) => {
                    let due = since + CHECKPOINT_EVERY;
                    if Instant::now() >= due {
                        break;
                    }
                    self.wake.wait_until(&mut state, due);
                }
                None => self.wake.wait(&mut state),
            }
        }
        Some(Group {
            records: std::mem::replace(&mut state.pending, spare),
            seq: state.seq,
            flush_sled: std::mem::take(&mut state.flush_sled),
        })
    }

    fn run(&self, db: &sled::Db, mut wal: Wal) {
        let mut spare = Vec::new();
        // When the log's oldest record since the last checkpoint was written.
        let mut log_since: Option<Instant> = None;
        while let Some(mut group) = self.next_group(std::mem::take(&mut spare), log_since) {
            let mut flush_sled = group.flush_sled;
            if !group.records.is_empty() {
                match wal.append(&group.records) {
                    Ok(()) => {
                        log_since.get_or_insert_with(Instant::now);
                    }
                    Err(e) => {
                        tracing::error!("catalog log write failed: {e}");
                        // sled holds the changes too: flushing it makes them
                        // durable without the log.
                        flush_sled = true;
                    }
                }
            }
            if flush_sled {
                if let Err(e) = db.flush() {
                    tracing::error!("catalog flush failed: {e}");
                }
            }
            if group.seq > *self.flushed.borrow() {
                self.flushed.send_replace(group.seq);
            }
            group.records.clear();
            spare = group.records;
            let due = log_since.is_some_and(|since| since.elapsed() >= CHECKPOINT_EVERY);
            if wal.len() >= CHECKPOINT_BYTES || due {
                Self::checkpoint(db, &mut wal);
                log_since = None;
            }
        }
        // Closing: everything is in the log; put it in sled for good.
        match db.flush() {
            Ok(_) => {
                if let Err(e) = wal.remove_all() {
                    tracing::error!("cannot delete the catalog log: {e}");
                }
            }
            Err(e) => tracing::error!("catalog flush failed: {e}"),
        }
    }

    /// Starts a new log file, flushes sled (which then holds every change
    /// of the older files) and deletes the older files.
    fn checkpoint(db: &sled::Db, wal: &mut Wal) {
        if let Err(e) = wal.rotate() {
            tracing::error!("cannot start a new catalog log file: {e:#}");
            return;
        }
        if let Err(e) = db.flush() {
            tracing::error!("catalog flush failed: {e}");
            return;
        }
        if let Err(e) = wal.remove_older() {
            tracing::error!("cannot delete old catalog log files: {e}");
        }
    }
}

impl Catalog {
    /// Opens the catalog (sled) at `path` and its log beside it
    /// (`<path>-wal`), replaying what the log holds first.
    pub fn open(path: &Path) -> anyhow::Result<Catalog> {
        let db =
            sled::open(path).with_context(|| format!("cannot open catalog {}", path.display()))?;
        let wal = Wal::recover(
            &catalog_wal::dir_for(path),
            |record| {
                let tree = db.open_tree(&record.tree)?;
                match record.value {
                    Some(value) => tree.insert(record.key, value).map(drop)?,
                    None => tree.remove(record.key).map(drop)?,
                }
                Ok(())
            },
            || Ok(db.flush().map(drop)?),
        )?;
        let flusher = Arc::new(Flusher {
            written: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            flushed: watch::channel(0).0,
        });
        let thread = std::thread::Builder::new()
            .name("catalog-flush".into())
            .spawn({
                let flusher = flusher.clone();
                let db = db.clone();
                move || flusher.run(&db, wal)
            })
            .context("cannot start the catalog flusher")?;
        Ok(Catalog {
            flusher,
            thread: Some(thread),
            exchanges: db.open_tree(EXCHANGES)?,
            queues: db.open_tree(QUEUES)?,
            bindings: db.open_tree(BINDINGS)?,
            users: db.open_tree(USERS)?,
            vhosts: db.open_tree(VHOSTS)?,
            permissions: db.open_tree(PERMISSIONS)?,
            db,
        })
    }

    /// A tree beside the definitions, to read, or to write records often
    /// that sled's own timer flushes (stream consumer offsets). Durable
    /// writes go through `put_raw` / `remove_raw`.
    pub fn tree(&self, name: &str) -> anyhow::Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// Sets `key` in tree `tree` (e.g. "policies") as a catalog change:
    /// durable once `flushed` passes `written`.
    pub fn put_raw(&self, tree: &str, key: &[u8], value: &[u8]) {
        match self.db.open_tree(tree) {
            Ok(t) => self.change(&t, tree, key, Some(value)),
            Err(e) => tracing::error!("cannot open catalog tree {tree}: {e}"),
        }
    }

    /// Removes `key` from tree `tree` as a catalog change.
    pub fn remove_raw(&self, tree: &str, key: &[u8]) {
        match self.db.open_tree(tree) {
            Ok(t) => self.change(&t, tree, key, None),
            Err(e) => tracing::error!("cannot open catalog tree {tree}: {e}"),
        }
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, name: &str, k: Vec<u8>, value: &T) {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.change(tree, name, &k, Some(&bytes)),
            Err(e) => tracing::error!("catalog record not encodable: {e}"),
        }
    }

    fn remove(&self, tree: &sled::Tree, name: &str, k: Vec<u8>) {
        self.change(tree, name, &k, None);
    }

    /// Applies a change to sled and queues its log record, under one lock:
    /// sled and the log see the changes in the same order.
    fn change(&self, tree: &sled::Tree, name: &str, k: &[u8], value: Option<&[u8]>) {
        let mut state = self.flusher.state.lock();
        let applied = match value {
            Some(v) => tree.insert(k, v).map(drop),
            None => tree.remove(k).map(drop),
        };
        if let Err(e) = applied {
            tracing::error!("catalog write failed: {e}");
        }
        catalog_wal::encode(&mut state.pending, name, k, value);
        state.seq = self.flusher.written.fetch_add(1, Ordering::AcqRel) + 1;
        drop(state);
        self.flusher.wake.notify_one();
    }

    /// Counts a change to a tree written directly (see `tree`) and asks the
    /// thread to flush sled for it (slow: prefer `put_raw`/`remove_raw`).
    pub fn note_change(&self) {
        let mut state = self.flusher.state.lock();
        state.seq = self.flusher.written.fetch_add(1, Ordering::AcqRel) + 1;
        state.flush_sled = true;
        drop(state);
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
        self.put(&self.exchanges, EXCHANGES, key(&[&r.vhost, &r.name]), r);
    }

    pub fn delete_exchange(&self, vhost: &str, name: &str) {
        self.remove(&self.exchanges, EXCHANGES, key(&[vhost, name]));
    }

    pub fn put_queue(&self, r: &QueueRecord) {
        self.put(&self.queues, QUEUES, key(&[&r.vhost, &r.name]), r);
    }

    pub fn delete_queue(&self, vhost: &str, name: &str) {
        self.remove(&self.queues, QUEUES, key(&[vhost, name]));
    }

    pub fn put_binding(&self, r: &BindingRecord) {
        self.put(&self.bindings, BINDINGS, r.key(), r);
    }

    pub fn delete_binding(&self, r: &BindingRecord) {
        self.remove(&self.bindings, BINDINGS, r.key());
    }

    /// Removes every binding with `name` as source or destination.
    pub fn delete_bindings_touching(&self, vhost: &str, name: &str, is_queue: bool) {
        for binding in self.bindings() {
            let as_source = !is_queue && binding.source == name;
            let as_destination =
                binding.destination == name && binding.destination_is_queue == is_queue;
            if binding.vhost == vhost && (as_source || as_destination) {
                self.remove(&self.bindings, BINDINGS, binding.key());
            }
        }
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
        self.put(&self.users, USERS, key(&[&r.name]), r);
    }

    /// Removes a user and its permissions.
    pub fn delete_user(&self, name: &str) {
        for p in self.permissions() {
            if p.user == name {
                self.remove(&self.permissions, PERMISSIONS, key(&[&p.user, &p.vhost]));
            }
        }
        self.remove(&self.users, USERS, key(&[name]));
    }

    pub fn users(&self) -> Vec<UserRecord> {
        Self::all(&self.users)
    }

    pub fn put_vhost(&self, r: &VhostRecord) {
        self.put(&self.vhosts, VHOSTS, key(&[&r.name]), r);
    }

    /// Removes a vhost with its permissions and every exchange, queue and
    /// binding stored for it.
    pub fn delete_vhost(&self, name: &str) {
        for p in self.permissions() {
            if p.vhost == name {
                self.remove(&self.permissions, PERMISSIONS, key(&[&p.user, &p.vhost]));
            }
        }
        for e in self.exchanges() {
            if e.vhost == name {
                self.remove(&self.exchanges, EXCHANGES, key(&[&e.vhost, &e.name]));
            }
        }
        for q in self.queues() {
            if q.vhost == name {
                self.remove(&self.queues, QUEUES, key(&[&q.vhost, &q.name]));
            }
        }
        for b in self.bindings() {
            if b.vhost == name {
                self.remove(&self.bindings, BINDINGS, b.key());
            }
        }
        self.remove(&self.vhosts, VHOSTS, key(&[name]));
    }

    pub fn vhosts(&self) -> Vec<VhostRecord> {
        Self::all(&self.vhosts)
    }

    pub fn put_permission(&self, r: &PermissionRecord) {
        self.put(&self.permissions, PERMISSIONS, key(&[&r.user, &r.vhost]), r);
    }

    pub fn delete_permission(&self, user: &str, vhost: &str) {
        self.remove(&self.permissions, PERMISSIONS, key(&[user, vhost]));
    }

    pub fn permissions(&self) -> Vec<PermissionRecord> {
        Self::all(&self.permissions)
    }
}

impl Drop for Catalog {
    /// The thread logs what is left, flushes sled, deletes the log, then
    /// ends.
    fn drop(&mut self) {
        self.flusher.state.lock().closing = true;
        self.flusher.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Err(e) = self.db.flush() {
            tracing::error!("catalog flush failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> QueueRecord {
        QueueRecord {
            vhost: "/".into(),
            name: name.into(),
            auto_delete: false,
            arguments: FieldTable::default(),
            node: None,
            durable: true,
            exclusive: false,
        }
    }

    fn wait_flushed(catalog: &Catalog) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while catalog.flushed_now() < catalog.written() {
            assert!(Instant::now() < deadline, "the catalog log was not synced");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn names(catalog: &Catalog) -> Vec<String> {
        let mut names: Vec<String> = catalog.queues().into_iter().map(|q| q.name).collect();
        names.sort();
        names
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    /// A crash that lost everything sled did not flush: only the log is
    /// left beside an empty catalog. Every synced change comes back from
    /// it, a delete after a put wins, a torn last record is ignored.
    #[test]
    fn synced_changes_come_back_from_the_log_alone() {
        let work = tempfile::tempdir().unwrap();
        let live = work.path().join("live").join("catalog");
        let catalog = Catalog::open(&live).unwrap();
        for name in ["a", "b", "c"] {
            catalog.put_queue(&queue(name));
        }
        catalog.delete_queue("/", "b");
        catalog.put_raw("policies", b"/\0p", b"{\"x\":1}");
        catalog.put_raw("policies", b"/\0gone", b"{}");
        catalog.remove_raw("policies", b"/\0gone");
        catalog.put_binding(&BindingRecord {
            vhost: "/".into(),
            source: "amq.direct".into(),
            destination: "a".into(),
            destination_is_queue: true,
            routing_key: "k".into(),
            arguments: FieldTable::default(),
        });
        catalog.delete_bindings_touching("/", "a", true);
        wait_flushed(&catalog);

        let crashed = work.path().join("crashed");
        let wal = catalog_wal::dir_for(&live);
        let crashed_wal = catalog_wal::dir_for(&crashed.join("catalog"));
        copy_dir(&wal, &crashed_wal);
        // A record being written at the crash: torn.
        let last = std::fs::read_dir(&crashed_wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let mut torn = Vec::new();
        catalog_wal::encode(&mut torn, QUEUES, b"/\0torn", Some(b"{}"));
        let mut bytes = std::fs::read(&last).unwrap();
        let end = catalog_wal::end_of_records(&bytes);
        assert!(end > 0 && bytes[end..].iter().all(|b| *b == 0));
        bytes[end..end + torn.len() - 3].copy_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(&last, bytes).unwrap();

        let restored = Catalog::open(&crashed.join("catalog")).unwrap();
        assert_eq!(names(&restored), ["a", "c"]);
        assert!(restored.bindings().is_empty());
        let policies = restored.tree("policies").unwrap();
        assert_eq!(
            policies.get(b"/\0p").unwrap().as_deref(),
            Some(&b"{\"x\":1}"[..])
        );
        assert_eq!(policies.get(b"/\0gone").unwrap(), None);
        // Replayed into sled and the log emptied: a second start agrees.
        drop(policies);
        drop(restored);
        let reopened = Catalog::open(&crashed.join("catalog")).unwrap();
        assert_eq!(names(&reopened), ["a", "c"]);
        assert_eq!(
            std::fs::read_dir(&crashed_wal).unwrap().count(),
            1,
            "one fresh, empty log file"
        );

        // A clean close checkpoints: sled has it all, the log is empty.
        drop(catalog);
        assert_eq!(std::fs::read_dir(&wal).unwrap().count(), 0);
        let reopened = Catalog::open(&live).unwrap();
        assert_eq!(names(&reopened), ["a", "c"]);
    }
}

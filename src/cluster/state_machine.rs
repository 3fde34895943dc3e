//! The metadata state machine: openraft's side of it. The state itself is
//! the broker's (through [`Applier`]); here we only keep, in sled, the last
//! applied log id, the last membership and the latest snapshot, so that a
//! restarted node knows where its state stands and can serve a snapshot to a
//! lagging peer.

// openraft dictates StorageError (large); its own examples allow this too.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError,
};

use super::rpc;
use super::types::{Entry, LogId, Reply, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use super::Applier;

const APPLIED: &[u8] = b"applied";
const SNAPSHOT_META: &[u8] = b"snapshot_meta";
// Stored raw, apart from its meta: it may exceed the frame-size limit of
// our bincode codec.
const SNAPSHOT_DATA: &[u8] = b"snapshot_data";

struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

pub(crate) struct StateMachine {
    applier: Arc<dyn Applier>,
    db: sled::Db,
    /// applied -> (last applied log id, last membership); snapshot -> StoredSnapshot
    tree: sled::Tree,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Makes snapshot ids unique within this process's life.
    snapshot_seq: u64,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&e)).into()
}

impl StateMachine {
    pub(crate) fn open(
        db: &sled::Db,
        applier: Arc<dyn Applier>,
    ) -> Result<StateMachine, StorageError> {
        let tree = db
            .open_tree("raft_sm")
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let (last_applied, membership) =
            match tree.get(APPLIED).map_err(|e| sm_err(ErrorVerb::Read, e))? {
                Some(v) => rpc::decode(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
                None => (None, StoredMembership::default()),
            };
        Ok(StateMachine {
            applier,
            db: db.clone(),
            tree,
            last_applied,
            membership,
            snapshot_seq: 0,
        })
    }

    /// Persists where the state machine stands. Flushed: a snapshot can be
    /// built (and the log purged) only up to a point recorded here, so after
    /// a crash we never need entries that were purged.
    async fn save_applied(&self) -> Result<(), StorageError> {
        let bytes = rpc::encode(&(&self.last_applied, &self.membership))
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.tree
            .insert(APPLIED, bytes)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(())
    }
}

async fn save_snapshot(
    db: &sled::Db,
    tree: &sled::Tree,
    snapshot: &StoredSnapshot,
) -> Result<(), StorageError> {
    let meta = rpc::encode(&snapshot.meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let mut batch = sled::Batch::default();
    batch.insert(SNAPSHOT_META, meta);
    batch.insert(SNAPSHOT_DATA, snapshot.data.as_slice());
    tree.apply_batch(batch)
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
    db.flush_async()
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
    Ok(())
}

/// A snapshot taken on the state machine task (so it is consistent with
/// `last_applied`), stored and handed to openraft off that task.
pub(crate) struct SnapshotBuilder {
    db: sled::Db,
    tree: sled::Tree,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            data: std::mem::take(&mut self.data),
        };
        save_snapshot(&self.db, &self.tree, &stored).await?;
        tracing::debug!(
            "cluster: snapshot {} built ({} bytes)",
            stored.meta.snapshot_id,
            stored.data.len()
        );
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Reply::default(),
                EntryPayload::Normal(cmd) => Reply(self.applier.apply(&cmd.0)),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Reply::default()
                }
            };
            replies.push(reply);
        }
        self.applier.persisted().await;
        self.save_applied().await?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let snapshot_id = match &self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            db: self.db.clone(),
            tree: self.tree.clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            data: self.applier.snapshot(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        tracing::info!(
            "cluster: installing snapshot {} ({} bytes, up to {:?})",
            meta.snapshot_id,
            data.len(),
            meta.last_log_id
        );
        self.applier.install(&data);
        self.applier.persisted().await;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.save_applied().await?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        save_snapshot(&self.db, &self.tree, &stored).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let read = |key| self.tree.get(key).map_err(|e| snap_err(ErrorVerb::Read, e));
        let (Some(meta), Some(data)) = (read(SNAPSHOT_META)?, read(SNAPSHOT_DATA)?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta = rpc::decode(&meta).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }
}

/// Clears what [`StateMachine`] persisted (after this node left).
pub(crate) async fn wipe(db: &sled::Db) -> Result<(), sled::Error> {
    db.open_tree("raft_sm")?.clear()?;
    db.flush_async().await?;
    Ok(())
}

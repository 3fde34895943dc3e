//! The Raft log, vote and committed index, in sled.
//!
//! Entries are keyed by their index (big-endian, so sled's key order is log
//! order). Every write that openraft must find after a crash (appended
//! entries, the vote, purge and truncate points) is flushed to disk before it
//! is acknowledged.

// openraft dictates StorageError (large); its own examples allow this too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::rpc;
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

type Vote = openraft::Vote<NodeId>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub(crate) struct LogStore {
    db: sled::Db,
    /// index (u64 BE) -> bincode(Entry)
    log: sled::Tree,
    /// vote, committed, last_purged
    meta: sled::Tree,
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn log_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    pub(crate) fn open(db: &sled::Db) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
        })
    }

    /// Whether this node has Raft state from an earlier run (a vote or a log):
    /// such a node must rejoin its cluster, never initialize a new one.
    pub(crate) fn has_state(&self) -> bool {
        matches!(self.meta.contains_key(VOTE), Ok(true))
            || !self.log.is_empty()
            || matches!(self.meta.contains_key(LAST_PURGED), Ok(true))
    }

    /// Forgets everything (after this node left its cluster).
    pub(crate) async fn wipe(&self) -> Result<(), sled::Error> {
        self.log.clear()?;
        self.meta.clear()?;
        self.db.flush_async().await?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let subject = ErrorSubject::Store;
        match self
            .meta
            .get(key)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?
        {
            None => Ok(None),
            Some(v) => rpc::decode(&v)
                .map(Some)
                .map_err(|e| io_err(subject, ErrorVerb::Read, e)),
        }
    }

    async fn put<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = rpc::encode(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.log.last().map_err(|e| log_err(ErrorVerb::Read, e))? {
            None => Ok(None),
            Some((_, v)) => {
                let entry: Entry = rpc::decode(&v).map_err(|e| log_err(ErrorVerb::Read, e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (key, value) = item.map_err(|e| log_err(ErrorVerb::Read, e))?;
            let index = key_index(&key);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = rpc::decode(&value).map_err(|e| log_err(ErrorVerb::Read, e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

fn key_index(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if key.len() == 8 {
        b.copy_from_slice(key);
    }
    u64::from_be_bytes(b)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get(LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put(VOTE, vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get(VOTE)
    }

    // Saving `committed` lets a restarted node re-apply up to it at once,
    // without waiting for a leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only delays re-applying until a leader speaks.
        let bytes = rpc::encode(&committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.meta
            .insert(COMMITTED, bytes)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = rpc::encode(&entry).map_err(|e| log_err(ErrorVerb::Write, e))?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| log_err(ErrorVerb::Write, e))?;
        // Entries are readable now; acknowledge only once they are on disk.
        let flushed = self
            .db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!("raft log: truncate from {log_id}");
        self.remove_range(log_id.index.to_be_bytes()..).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!("raft log: purge up to {log_id}");
        // Record the purge point first: a crash in between leaves entries
        // below it, which are ignored, never a hole above it.
        self.put(LAST_PURGED, &log_id, ErrorSubject::Logs).await?;
        self.remove_range(..=log_id.index.to_be_bytes()).await
    }
}

impl LogStore {
    async fn remove_range<R: RangeBounds<[u8; 8]>>(&self, range: R) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(range) {
            let (key, _) = item.map_err(|e| log_err(ErrorVerb::Delete, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        Ok(())
    }
}

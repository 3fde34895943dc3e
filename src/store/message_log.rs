//! The message log: persistent messages of durable queues, appended to
//! segment files by one writer thread that group-commits (one `fdatasync`
//! for everything that arrived while the previous one ran). Publisher
//! confirms wait for the sync that covers their message.
//!
//! A message routed to several durable queues is stored once; acks (and
//! anything else that removes it from a queue) append small records. A
//! segment is deleted once it and every older segment hold no live message,
//! so acks never outlive the messages they refer to.

use super::record::{self, Reader};
use super::stream_log::{StreamEntry, StreamLog};
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::watch;

/// A new segment is started once the current one reaches this size.
const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Most bytes written per group commit.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

enum Op {
    Publish {
        id: u64,
        queues: u32,
        seq: u64,
        payload: Bytes,
    },
    Remove {
        id: u64,
        payload: Bytes,
    },
    Delivered {
        payload: Bytes,
    },
    /// A message for a stream queue: written with the others of its batch
    /// as one chunk of that stream.
    Stream {
        seq: u64,
        log: Arc<StreamLog>,
        entry: StreamEntry,
    },
    /// Sync everything before; used by shutdown and tests.
    Sync {
        seq: u64,
    },
}

/// A message read back at start, with the durable queues that still hold it.
pub struct RecoveredMessage {
    pub id: u64,
    pub vhost: String,
    pub exchange: String,
    pub routing_key: String,
    pub raw_properties: Bytes,
    pub body: Bytes,
    /// (queue, was delivered before the stop)
    pub queues: Vec<(String, bool)>,
}

#[derive(Default)]
pub struct Recovered {
    pub messages: Vec<RecoveredMessage>,
    pub dropped_bytes: u64,
}

pub struct MessageLog {
    /// Sequence numbers are taken under the same lock as the send, so the
    /// writer sees them in order and "synced up to N" is meaningful.
    sender: Mutex<(u64, mpsc::Sender<Op>)>,
    next_id: AtomicU64,
    synced: watch::Receiver<u64>,
}

impl MessageLog {
    pub fn open(dir: &Path) -> anyhow::Result<(MessageLog, Recovered)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let started = std::time::Instant::now();
        let (state, recovered, next_id) = recover(dir)?;
        if !recovered.messages.is_empty() || recovered.dropped_bytes > 0 {
            tracing::info!(
                messages = recovered.messages.len(),
                dropped_bytes = recovered.dropped_bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "message log recovered"
            );
        }
        let (tx, rx) = mpsc::channel();
        let (synced_tx, synced_rx) = watch::channel(0u64);
        std::thread::Builder::new()
            .name("message-log".into())
            .spawn(move || writer(state, rx, synced_tx))
            .context("cannot start the message log writer")?;
        Ok((
            MessageLog {
                sender: Mutex::new((1, tx)),
                next_id: AtomicU64::new(next_id),
                synced: synced_rx,
            },
            recovered,
        ))
    }

    fn send(&self, make: impl FnOnce(u64) -> Op) -> u64 {
        let mut sender = self.sender.lock();
        let seq = sender.0;
        sender.0 += 1;
        if sender.1.send(make(seq)).is_err() {
            tracing::error!("message log writer is gone; message not stored");
        }
        seq
    }

    /// Appends a persistent message held by `queues` (durable queues of
    /// `vhost`). Returns its id and the sequence number whose sync makes
    /// it durable.
    pub fn append(
        &self,
        vhost: &str,
        queues: &[&str],
        exchange: &str,
        routing_key: &str,
        raw_properties: &[u8],
        body: &[u8],
    ) -> (u64, u64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut p = BytesMut::with_capacity(64 + raw_properties.len() + body.len());
        p.put_u8(record::PUBLISH);
        p.put_u64(id);
        record::put_str(&mut p, vhost);
        p.put_u16(queues.len() as u16);
        for q in queues {
            record::put_str(&mut p, q);
        }
        record::put_str(&mut p, exchange);
        record::put_str(&mut p, routing_key);
        record::put_blob(&mut p, raw_properties);
        record::put_blob(&mut p, body);
        let payload = p.freeze();
        let seq = self.send(|seq| Op::Publish {
            id,
            queues: queues.len() as u32,
            seq,
            payload,
        });
        (id, seq)
    }

    fn small(kind: u8, id: u64, vhost: &str, queue: &str) -> Bytes {
        let mut p = BytesMut::with_capacity(16 + vhost.len() + queue.len());
        p.put_u8(kind);
        p.put_u64(id);
        record::put_str(&mut p, vhost);
        record::put_str(&mut p, queue);
        p.freeze()
    }

    /// Appends a message to a stream queue's log. Returns the sequence
    /// number whose sync makes it durable.
    pub fn append_stream(&self, log: Arc<StreamLog>, entry: StreamEntry) -> u64 {
        self.send(|seq| Op::Stream { seq, log, entry })
    }

    /// The message left `queue` (acked, dropped, expired, purged...).
    pub fn remove(&self, id: u64, vhost: &str, queue: &str) {
        let payload = Self::small(record::ACK, id, vhost, queue);
        self.send(|_| Op::Remove { id, payload });
    }

    /// The message was handed to a consumer (for `redelivered` after a
    /// restart). Not waited for: losing it only loses that flag.
    pub fn delivered(&self, id: u64, vhost: &str, queue: &str) {
        let payload = Self::small(record::DELIVERED, id, vhost, queue);
        self.send(|_| Op::Delivered { payload });
    }

    /// A receiver of the highest synced sequence number.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.synced.clone()
    }

    /// Waits until everything appended so far is on disk.
    pub async fn sync(&self) {
        let seq = self.send(|seq| Op::Sync { seq });
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|s| *s >= seq).await;
    }
}

struct WriterState {
    dir: PathBuf,
    segment: u32,
    file: File,
    size: u64,
    /// id -> (segment, queues still holding it)
    live: HashMap<u64, (u32, u32)>,
    /// segment -> live references
    segments: BTreeMap<u32, u64>,
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:010}.seg"))
}

fn open_segment(dir: &Path, n: u32) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))
        .with_context(|| format!("cannot open segment {n}"))
}

impl WriterState {
    fn apply_publish(&mut self, id: u64, queues: u32) {
        self.live.insert(id, (self.segment, queues));
        *self.segments.entry(self.segment).or_default() += queues as u64;
    }

    fn apply_remove(&mut self, id: u64) {
        let Some(entry) = self.live.get_mut(&id) else {
            return;
        };
        entry.1 = entry.1.saturating_sub(1);
        let segment = entry.0;
        if entry.1 == 0 {
            self.live.remove(&id);
        }
        if let Some(refs) = self.segments.get_mut(&segment) {
            *refs = refs.saturating_sub(1);
        }
    }

    /// Deletes the oldest segments while they hold nothing live.
    fn reclaim(&mut self) {
        while let Some((&oldest, &refs)) = self.segments.iter().next() {
            if oldest == self.segment || refs > 0 {
                break;
            }
            self.segments.remove(&oldest);
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, oldest)) {
                tracing::warn!(segment = oldest, "cannot delete drained segment: {e}");
            }
        }
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        self.file.sync_data()?;
        self.segment += 1;
        self.file = open_segment(&self.dir, self.segment)?;
        self.size = 0;
        self.segments.entry(self.segment).or_default();
        Ok(())
    }
}

fn writer(mut state: WriterState, rx: mpsc::Receiver<Op>, synced: watch::Sender<u64>) {
    let mut buf = BytesMut::with_capacity(1 << 20);
    // Stream entries of this batch, one list per stream (few streams: a
    // linear search is fine).
    let mut streams: Vec<(Arc<StreamLog>, Vec<StreamEntry>)> = Vec::new();
    let mut stream_bytes = 0;
    while let Ok(first) = rx.recv() {
        let mut max_seq = 0;
        let mut op = Some(first);
        while let Some(current) = op.take() {
            match current {
                Op::Publish {
                    id,
                    queues,
                    seq,
                    payload,
                } => {
                    record::frame(&mut buf, &payload);
                    state.apply_publish(id, queues);
                    max_seq = max_seq.max(seq);
                }
                Op::Remove { id, payload } => {
                    record::frame(&mut buf, &payload);
                    state.apply_remove(id);
                }
                Op::Delivered { payload } => record::frame(&mut buf, &payload),
                Op::Stream { seq, log, entry } => {
                    stream_bytes += entry.body.len() + entry.raw_properties.len();
                    match streams.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &log)) {
                        Some((_, entries)) => entries.push(entry),
                        None => streams.push((log, vec![entry])),
                    }
                    max_seq = max_seq.max(seq);
                }
                Op::Sync { seq } => max_seq = max_seq.max(seq),
            }
            if buf.len() + stream_bytes < BATCH_BYTES {
                op = rx.try_recv().ok();
            }
        }
        // Each batch that writes syncs, so a batch without writes (only a
        // Sync, or only stream entries) has nothing of its own to sync.
        if !buf.is_empty() {
            if let Err(e) = state.file.write_all(&buf) {
                // Without the write, nothing may be confirmed: stop here.
                tracing::error!("message log write failed, no further confirms: {e}");
                return;
            }
            state.size += buf.len() as u64;
            buf.clear();
            if let Err(e) = state.file.sync_data() {
                tracing::error!("message log fdatasync failed, no further confirms: {e}");
                return;
            }
        }
        stream_bytes = 0;
        for (log, entries) in streams.drain(..) {
            if let Err(e) = log.commit(entries) {
                if !log.is_deleted() {
                    tracing::error!("stream write failed, no further confirms: {e}");
                    return;
                }
            }
        }
        if max_seq > 0 {
            synced.send_if_modified(|s| {
                let changed = max_seq > *s;
                *s = (*s).max(max_seq);
                changed
            });
        }
        if state.size >= SEGMENT_SIZE {
            if let Err(e) = state.rotate() {
                tracing::error!("message log rotation failed: {e}");
                return;
            }
        }
        state.reclaim();
    }
}

/// Reads every segment, truncating a torn tail, and rebuilds what is live.
fn recover(dir: &Path) -> anyhow::Result<(WriterState, Recovered, u64)> {
    let mut numbers: Vec<u32> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut messages: BTreeMap<u64, (u32, RecoveredMessage)> = BTreeMap::new();
    let mut recovered = Recovered::default();
    let mut max_id = 0;
    for (index, &n) in numbers.iter().enumerate() {
        let path = segment_path(dir, n);
        let data = Bytes::from(
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        );
        let mut pos = 0;
        while let Some((payload, next)) = record::read(&data, pos) {
            apply_record(n, payload, &mut messages, &mut max_id);
            pos = next;
        }
        if pos < data.len() {
            let dropped = (data.len() - pos) as u64;
            recovered.dropped_bytes += dropped;
            if index + 1 == numbers.len() {
                tracing::warn!(
                    segment = n,
                    offset = pos,
                    dropped,
                    "truncating torn or corrupt tail of the message log"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(pos as u64)?;
                file.sync_all()?;
            } else {
                tracing::error!(
                    segment = n,
                    offset = pos,
                    dropped,
                    "corrupt record inside an older segment; the rest of it is skipped"
                );
            }
        }
    }
    let mut segments: BTreeMap<u32, u64> = numbers.iter().map(|&n| (n, 0)).collect();
    let mut live = HashMap::new();
    for (id, (segment, m)) in &messages {
        *segments.entry(*segment).or_default() += m.queues.len() as u64;
        live.insert(*id, (*segment, m.queues.len() as u32));
    }
    let segment = numbers.last().copied().unwrap_or(0);
    let file = open_segment(dir, segment)?;
    let size = file.metadata()?.len();
    segments.entry(segment).or_default();
    let mut state = WriterState {
        dir: dir.to_path_buf(),
        segment,
        file,
        size,
        live,
        segments,
    };
    state.reclaim();
    recovered.messages = messages.into_values().map(|(_, m)| m).collect();
    Ok((state, recovered, max_id + 1))
}

fn apply_record(
    segment: u32,
    payload: Bytes,
    messages: &mut BTreeMap<u64, (u32, RecoveredMessage)>,
    max_id: &mut u64,
) {
    let mut r = Reader(payload);
    let parsed = (|| {
        let kind = r.u8()?;
        let id = r.u64()?;
        *max_id = (*max_id).max(id);
        match kind {
            record::PUBLISH => {
                let vhost = r.str()?;
                let count = r.u16()?;
                let mut queues = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    queues.push((r.str()?, false));
                }
                let exchange = r.str()?;
                let routing_key = r.str()?;
                let raw_properties = r.blob()?;
                let body = r.blob()?;
                messages.insert(
                    id,
                    (
                        segment,
                        RecoveredMessage {
                            id,
                            vhost,
                            exchange,
                            routing_key,
                            raw_properties,
                            body,
                            queues,
                        },
                    ),
                );
            }
            record::ACK | record::DELIVERED => {
                let _vhost = r.str()?;
                let queue = r.str()?;
                if let Some((_, m)) = messages.get_mut(&id) {
                    if kind == record::ACK {
                        m.queues.retain(|(q, _)| *q != queue);
                        if m.queues.is_empty() {
                            messages.remove(&id);
                        }
                    } else if let Some(entry) = m.queues.iter_mut().find(|(q, _)| *q == queue) {
                        entry.1 = true;
                    }
                }
            }
            _ => return None,
        }
        Some(())
    })();
    if parsed.is_none() {
        tracing::warn!(segment, "skipping an unreadable record in the message log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_survive_reopen_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, recovered) = MessageLog::open(dir.path()).unwrap();
            assert!(recovered.messages.is_empty());
            let (a, _) = log.append("/", &["q1", "q2"], "x", "k", &[0, 0], b"one");
            let (b, _) = log.append("/", &["q1"], "", "q1", &[0, 0], b"two");
            log.remove(a, "/", "q1");
            log.delivered(b, "/", "q1");
            log.sync().await;
        }
        let (_log, recovered) = MessageLog::open(dir.path()).unwrap();
        let got: Vec<(String, Vec<(String, bool)>)> = recovered
            .messages
            .iter()
            .map(|m| {
                (
                    String::from_utf8(m.body.to_vec()).unwrap(),
                    m.queues.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("one".into(), vec![("q2".into(), false)]),
                ("two".into(), vec![("q1".into(), true)]),
            ]
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_and_intact_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = MessageLog::open(dir.path()).unwrap();
            log.append("/", &["q"], "", "q", &[0, 0], b"kept");
            log.append("/", &["q"], "", "q", &[0, 0], b"torn");
            log.sync().await;
        }
        let seg = segment_path(dir.path(), 0);
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let (_log, recovered) = MessageLog::open(dir.path()).unwrap();
        assert_eq!(recovered.messages.len(), 1);
        assert_eq!(&recovered.messages[0].body[..], b"kept");
        assert!(recovered.dropped_bytes > 0);
    }
}

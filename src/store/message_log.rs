//! The message log: persistent messages of durable queues, appended to
//! segment files by one writer thread that group-commits (one `fdatasync`
//! for everything that arrived while the previous one ran). Publisher
//! confirms wait for the sync that covers their message.
//!
//! A message routed to several durable queues is stored once; acks (and
//! anything else that removes it from a queue) append small records, each
//! naming the segment that held the message's publish record ("target").
//!
//! Disk use follows live data: a segment is deleted as soon as it holds no
//! live message and no removal record whose target segment still exists
//! (that record is what keeps a dead message there from coming back). A
//! segment whose live bytes fall below half of it is compacted (see
//! `compaction`): its live messages are rewritten into the current segment
//! under the same id, listing only the queues that still hold them, and
//! its still-needed removal records are carried along; once that is synced
//! the old segment is deleted. Recovery reads segments in order and a
//! later publish record of an id replaces the earlier one, so a copy and
//! its original never both come back.

use super::compaction::{self, ChunkEnd};
use super::inbox::Inbox;
use super::record::{self, Reader};
use super::stream_log::{StreamEntry, StreamLog};
use super::write_failures::WriteFailures;
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// A new segment is started once the current one reaches this size
/// (`storage.segment_size_bytes`).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted (tests use small ones).
const MIN_SEGMENT_SIZE: u64 = 64 * 1024;

/// Settings of the message log.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    pub segment_size: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}
/// Most bytes written per group commit.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// A batch of stream entries that needed no fsync, found already waiting,
/// with fewer ops than this makes the writer pause before the next one
/// (see `writer`).
const COALESCE_BELOW: usize = 256;
/// How long such a pause lasts (the kernel's timer slack adds ~50 µs).
const COALESCE_PAUSE: std::time::Duration = std::time::Duration::from_micros(50);
/// How often an idle writer checks whether a segment needs compacting.
const IDLE_MAINTENANCE: std::time::Duration = std::time::Duration::from_millis(500);
/// A take returning faster than this means work was already waiting.
const BUSY_TAKE: std::time::Duration = std::time::Duration::from_micros(5);

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
        id: u64,
        payload: Bytes,
    },
    /// Records of a segment being compacted, from the compaction thread.
    Compact {
        segment: u32,
        records: Vec<Bytes>,
        end: ChunkEnd,
        /// Told, after the commit that wrote the copies, whether to go on.
        done: std::sync::mpsc::SyncSender<bool>,
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
    pub messages: RecoveredMessages,
    pub dropped_bytes: u64,
    /// (segment, offset) of corrupt records skipped inside the log, the
    /// intact records after them kept.
    pub corrupt_records: Vec<(u32, u64)>,
}

/// Where a live message's publish record is, and which queues still hold
/// it: all that recovery keeps in memory per message, so that a restart
/// with a backlog larger than memory does not hold every body at once.
struct LiveRecord {
    segment: u32,
    offset: u64,
    /// Framed size of the record.
    size: u32,
    /// How many queues the record names.
    queues: u16,
    /// (index into `RecoveredMessages::queue_names`, delivered before the stop)
    holders: Vec<(u32, bool)>,
}

/// The live messages of the log in id order, each read back from its
/// segment only when asked for: queues take them one at a time and page
/// what is beyond their memory bound as they go.
#[derive(Default)]
pub struct RecoveredMessages {
    dir: PathBuf,
    live: BTreeMap<u64, LiveRecord>,
    /// Queue names, interned: one string per queue, not one per message.
    queue_names: Vec<String>,
    window: Option<Window>,
    /// Set while these are being read back: compaction (which moves live
    /// records) waits until then.
    reading: Option<Arc<AtomicBool>>,
}

impl Drop for RecoveredMessages {
    fn drop(&mut self) {
        if let Some(reading) = &self.reading {
            reading.store(false, Ordering::Release);
        }
    }
}

/// A run of one segment read with one `pread`, from which consecutive
/// records are taken.
struct Window {
    segment: u32,
    file: File,
    start: u64,
    data: Bytes,
}

/// Bytes read ahead at once while reading back.
const READ_WINDOW: usize = 4 * 1024 * 1024;

impl RecoveredMessages {
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The publish record at `offset` of `segment`, checked again.
    fn read_record(&mut self, segment: u32, offset: u64) -> std::io::Result<Option<Bytes>> {
        use std::os::unix::fs::FileExt;
        let covered = self.window.as_ref().is_some_and(|w| {
            w.segment == segment
                && offset >= w.start
                && offset + record::HEADER as u64 <= w.start + w.data.len() as u64
        });
        if !covered {
            let file = match self.window.take() {
                Some(w) if w.segment == segment => w.file,
                _ => File::open(segment_path(&self.dir, segment))?,
            };
            let data = read_at_most(&file, offset, READ_WINDOW)?;
            self.window = Some(Window {
                segment,
                file,
                start: offset,
                data,
            });
        }
        let Some(w) = self.window.as_mut() else {
            return Ok(None);
        };
        let pos = (offset - w.start) as usize;
        if pos + record::HEADER > w.data.len() {
            return Ok(None);
        }
        let len = u32::from_be_bytes([
            w.data[pos],
            w.data[pos + 1],
            w.data[pos + 2],
            w.data[pos + 3],
        ]) as usize;
        if pos + record::HEADER + len > w.data.len() && len <= record::MAX_RECORD {
            // A record longer than the rest of the window: read it whole.
            let mut data = vec![0; record::HEADER + len];
            w.file.read_exact_at(&mut data, offset)?;
            w.start = offset;
            w.data = Bytes::from(data);
            return Ok(record::read(&w.data, 0).map(|(payload, _)| payload));
        }
        Ok(record::read(&w.data, pos).map(|(payload, _)| payload))
    }
}

/// Up to `max` bytes of `file` from `offset` (fewer at its end).
fn read_at_most(file: &File, offset: u64, max: usize) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0; max];
    let mut filled = 0;
    while filled < max {
        match file.read_at(&mut data[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(filled);
    Ok(Bytes::from(data))
}

impl Iterator for RecoveredMessages {
    type Item = RecoveredMessage;

    fn next(&mut self) -> Option<RecoveredMessage> {
        while let Some((id, live)) = self.live.pop_first() {
            let payload = match self.read_record(live.segment, live.offset) {
                Ok(Some(payload)) => payload,
                Ok(None) => {
                    tracing::error!(
                        id,
                        segment = live.segment,
                        "stored message changed on disk since recovery began; skipped"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::error!(
                        id,
                        segment = live.segment,
                        "cannot read stored message back: {e}"
                    );
                    continue;
                }
            };
            let Some(publish) = parse_publish(payload) else {
                tracing::error!(
                    id,
                    segment = live.segment,
                    "stored message unreadable on the second read; skipped"
                );
                continue;
            };
            let queues = live
                .holders
                .iter()
                .map(|&(q, delivered)| (self.queue_names[q as usize].clone(), delivered))
                .collect();
            // Copies, so that a message kept in memory does not pin the
            // whole read-ahead window.
            return Some(RecoveredMessage {
                id,
                vhost: publish.vhost,
                exchange: publish.exchange,
                routing_key: publish.routing_key,
                raw_properties: Bytes::copy_from_slice(&publish.raw_properties),
                body: Bytes::copy_from_slice(&publish.body),
                queues,
            });
        }
        None
    }
}

/// The fields of a publish record after its kind and id.
struct Publish {
    vhost: String,
    queues: Vec<String>,
    exchange: String,
    routing_key: String,
    raw_properties: Bytes,
    body: Bytes,
}

/// The payload of a publish record.
fn publish_payload(
    id: u64,
    vhost: &str,
    queues: &[&str],
    exchange: &str,
    routing_key: &str,
    raw_properties: &[u8],
    body: &[u8],
) -> Bytes {
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
    p.freeze()
}

/// A removal or delivered record's queue name and target segment (`None`
/// for records written before targets were recorded).
struct Removal {
    queue: Bytes,
    target: Option<u32>,
}

fn parse_removal(payload: Bytes) -> Option<Removal> {
    let mut r = Reader(payload);
    let kind = r.u8()?;
    if kind != record::ACK && kind != record::DELIVERED {
        return None;
    }
    r.u64()?;
    r.str_bytes()?;
    let queue = r.str_bytes()?;
    let target = match r.remaining() {
        4 => r.u32(),
        _ => None,
    };
    Some(Removal { queue, target })
}

fn parse_publish(payload: Bytes) -> Option<Publish> {
    let mut r = Reader(payload);
    if r.u8()? != record::PUBLISH {
        return None;
    }
    r.u64()?;
    let vhost = r.str()?;
    let count = r.u16()?;
    let mut queues = Vec::with_capacity(count as usize);
    for _ in 0..count {
        queues.push(r.str()?);
    }
    Some(Publish {
        vhost,
        queues,
        exchange: r.str()?,
        routing_key: r.str()?,
        raw_properties: r.blob()?,
        body: r.blob()?,
    })
}

pub struct MessageLog {
    /// Operations for the writer thread, in sequence order.
    inbox: Arc<Inbox<Op>>,
    next_id: AtomicU64,
    synced: watch::Receiver<u64>,
    failures: Arc<WriteFailures>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl MessageLog {
    pub fn open(dir: &Path) -> anyhow::Result<(MessageLog, Recovered)> {
        Self::open_with(dir, LogOptions::default())
    }

    pub fn open_with(dir: &Path, options: LogOptions) -> anyhow::Result<(MessageLog, Recovered)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let started = std::time::Instant::now();
        let options = LogOptions {
            segment_size: options.segment_size.max(MIN_SEGMENT_SIZE),
        };
        let (mut state, recovered, next_id) = recover(dir, options)?;
        if !recovered.messages.is_empty() || recovered.dropped_bytes > 0 {
            tracing::info!(
                messages = recovered.messages.len(),
                dropped_bytes = recovered.dropped_bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "message log recovered"
            );
        }
        let inbox = Arc::new(Inbox::new(1));
        let writer_inbox = inbox.clone();
        let (synced_tx, synced_rx) = watch::channel(0u64);
        let (requests_tx, requests) = std::sync::mpsc::channel();
        let gc_inbox = inbox.clone();
        let gc_dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("message-log-gc".into())
            .spawn(move || {
                compaction::run(gc_dir, requests, |segment, records, end| {
                    let (done, reply) = std::sync::mpsc::sync_channel(1);
                    gc_inbox.push(|_| Op::Compact {
                        segment,
                        records,
                        end,
                        done,
                    })?;
                    reply.recv().ok()
                })
            })
            .context("cannot start the message log compaction")?;
        state.gc = Some(requests_tx);
        let failures = Arc::new(WriteFailures::default());
        let writer_failures = failures.clone();
        let writer = std::thread::Builder::new()
            .name("message-log".into())
            .spawn(move || writer(state, &writer_inbox, synced_tx, &writer_failures))
            .context("cannot start the message log writer")?;
        Ok((
            MessageLog {
                inbox,
                next_id: AtomicU64::new(next_id),
                synced: synced_rx,
                failures,
                writer: Some(writer),
            },
            recovered,
        ))
    }

    fn send(&self, make: impl FnOnce(u64) -> Op) -> u64 {
        match self.inbox.push(make) {
            Some(seq) => seq,
            None => {
                // The writer stopped on an I/O error: nothing is confirmed
                // from then on (u64::MAX is never synced).
                tracing::error!("message log writer is gone; message not stored");
                u64::MAX
            }
        }
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
        let payload = publish_payload(
            id,
            vhost,
            queues,
            exchange,
            routing_key,
            raw_properties,
            body,
        );
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
        self.send(|_| Op::Delivered { id, payload });
    }

    /// A receiver of the sequence number up to which every append is
    /// decided: synced, or failed (`failures`) when writing failed.
    pub fn synced(&self) -> watch::Receiver<u64> {
        self.synced.clone()
    }

    /// Which decided appends were not stored.
    pub fn failures(&self) -> &WriteFailures {
        &self.failures
    }

    /// Waits until everything appended so far is on disk; false if some
    /// of it could not be written (it is retried, but not waited for).
    pub async fn sync(&self) -> bool {
        let seq = self.send(|seq| Op::Sync { seq });
        let mut synced = self.synced.clone();
        synced.wait_for(|s| *s >= seq).await.is_ok() && !self.failures.failed(seq)
    }
}

impl Drop for MessageLog {
    /// The writer stores what it was given, then ends; waited for, so
    /// that nothing deletes segments once the log is closed.
    fn drop(&mut self) {
        self.inbox.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What the writer knows of a live message: where its (latest) publish
/// record is, and which queues hold it.
struct LiveMessage {
    segment: u32,
    /// Framed size of that record.
    size: u32,
    /// Queues still holding it.
    refs: u16,
    /// Handed to a consumer at some point (kept on copies).
    delivered: bool,
    /// Stored for several queues: the removed ones are listed in
    /// `WriterState::removed` so that a copy names only the others.
    multi: bool,
}

#[derive(Default)]
struct SegmentInfo {
    /// Bytes written to it.
    size: u64,
    /// Bytes of the live messages whose record is here.
    live: u64,
    /// Bytes of removal / delivered records here, by the segment they
    /// target (never this one): needed while that segment exists.
    needs: BTreeMap<u32, u64>,
    /// Holds records from before targets were recorded: compacted only
    /// once it is the oldest segment (then they refer to nothing).
    legacy: bool,
    /// Compaction failed; not retried until restart.
    stuck: bool,
    /// Live bytes when last looked at, and since when they are so.
    seen: Option<(u64, std::time::Instant)>,
}

impl SegmentInfo {
    fn live_bytes(&self) -> u64 {
        self.live + self.needs.values().sum::<u64>()
    }
}

struct WriterState {
    dir: PathBuf,
    segment_size: u64,
    segment: u32,
    file: File,
    size: u64,
    live: HashMap<u64, LiveMessage>,
    /// Queues removed from multi-queue live messages since their record
    /// was written.
    removed: HashMap<u64, Vec<Box<str>>>,
    segments: BTreeMap<u32, SegmentInfo>,
    /// Segments holding publish records that a later copy replaced (left
    /// by a crash during compaction). Such a record must go before the copy
    /// can: until these are compacted, no segment is deleted.
    hazards: BTreeSet<u32>,
    /// Compaction requests (None: compaction off, as in recovery).
    gc: Option<std::sync::mpsc::Sender<u32>>,
    /// The segment being compacted, and whether copies were made from it.
    gc_busy: Option<(u32, bool)>,
    /// Recovered messages are still being read back from their segments.
    reading_back: Arc<AtomicBool>,
    /// A failed write left bytes after `size` that could not be cut off:
    /// nothing is written until they are.
    torn: bool,
}

pub(super) fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:010}.seg"))
}

fn open_segment(dir: &Path, n: u32, size: u64) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))
        .with_context(|| format!("cannot open segment {n}"))?;
    preallocate(&file, size);
    Ok(file)
}

/// Reserves a segment's blocks up front (without changing its length, so
/// readers and recovery still see exactly what was written): appends then
/// never wait for the file system to allocate, and the segment is less
/// fragmented. A file system without `fallocate` just appends as before.
/// True if the blocks were reserved.
fn preallocate(file: &File, size: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            size as libc::off_t,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "segment preallocation unavailable: {}",
            std::io::Error::last_os_error()
        );
    }
    rc == 0
}

/// Live bytes below this fraction of a segment make it a compaction
/// candidate (copying costs at most half a segment per segment freed), once
/// they have stayed the same for `SETTLED`: a segment whose messages are
/// still being consumed will soon hold nothing and be deleted without
/// copying anything.
fn worth_compacting(info: &mut SegmentInfo, now: std::time::Instant) -> bool {
    let live = info.live_bytes();
    if live * 2 >= info.size {
        return false;
    }
    match info.seen {
        Some((seen, since)) if seen == live => now.duration_since(since) >= SETTLED,
        _ => {
            info.seen = Some((live, now));
            false
        }
    }
}

/// How long a segment's live bytes must stay unchanged before it is
/// compacted.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(1);

impl WriterState {
    fn apply_publish(&mut self, id: u64, queues: u32, size: usize) {
        if queues == 0 {
            return;
        }
        self.live.insert(
            id,
            LiveMessage {
                segment: self.segment,
                size: size as u32,
                refs: queues.min(u16::MAX as u32) as u16,
                delivered: false,
                multi: queues > 1,
            },
        );
        self.segments.entry(self.segment).or_default().live += size as u64;
    }

    /// Notes that a removal / delivered record of `size` bytes targeting
    /// `target` is written to the current segment.
    fn note_target(&mut self, target: u32, size: usize) {
        if target != self.segment && target != record::NO_TARGET {
            *self
                .segments
                .entry(self.segment)
                .or_default()
                .needs
                .entry(target)
                .or_default() += size as u64;
        }
    }

    /// Applies a removal; returns its target.
    fn apply_remove(&mut self, id: u64, payload: &Bytes) -> u32 {
        let Some(entry) = self.live.get_mut(&id) else {
            return record::NO_TARGET;
        };
        let target = entry.segment;
        if entry.multi {
            // A copy made from now on must not name this queue; and a
            // second removal from the same queue must not count as another
            // (the copy would then leave out a queue that still holds it).
            if let Some(r) = parse_removal(payload.clone()) {
                let queue: Box<str> = String::from_utf8_lossy(&r.queue).into();
                let removed = self.removed.entry(id).or_default();
                if removed.contains(&queue) {
                    return target;
                }
                if entry.refs > 1 {
                    removed.push(queue);
                }
            }
        }
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs == 0 {
            let size = entry.size as u64;
            let multi = entry.multi;
            self.live.remove(&id);
            if multi {
                self.removed.remove(&id);
            }
            if let Some(info) = self.segments.get_mut(&target) {
                info.live = info.live.saturating_sub(size);
            }
        }
        target
    }

    fn apply_delivered(&mut self, id: u64) -> u32 {
        match self.live.get_mut(&id) {
            Some(entry) => {
                entry.delivered = true;
                entry.segment
            }
            None => record::NO_TARGET,
        }
    }

    /// Takes what is still needed of a chunk of a segment being compacted
    /// into `buf`: live messages rewritten (same id, remaining queues, and
    /// their delivered flag), removal records whose target still exists.
    /// False if the segment cannot be compacted.
    fn apply_chunk(&mut self, from: u32, records: &[Bytes], buf: &mut BytesMut) -> bool {
        for payload in records {
            match payload.first().copied() {
                Some(record::PUBLISH) => self.copy_forward(from, payload, buf),
                Some(record::ACK | record::DELIVERED) => {
                    let Some(r) = parse_removal(payload.clone()) else {
                        continue;
                    };
                    match r.target {
                        None => {
                            // Written before targets were recorded: it may
                            // refer to any older segment.
                            if self.segments.range(..from).next().is_some() {
                                tracing::warn!(
                                    segment = from,
                                    "segment from an older version not compacted while older ones remain"
                                );
                                return false;
                            }
                        }
                        Some(target) => {
                            if target != from
                                && target != record::NO_TARGET
                                && self.segments.contains_key(&target)
                            {
                                record::frame(buf, payload);
                                self.note_target(target, record::HEADER + payload.len());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        true
    }

    fn copy_forward(&mut self, from: u32, payload: &Bytes, buf: &mut BytesMut) {
        let mut r = Reader(payload.clone());
        let (Some(_), Some(id)) = (r.u8(), r.u64()) else {
            return;
        };
        // Only the message's latest record, and only while it is live.
        let Some(entry) = self.live.get(&id) else {
            return;
        };
        if entry.segment != from {
            return;
        }
        let Some(p) = parse_publish(payload.clone()) else {
            return;
        };
        let removed = self.removed.get(&id);
        let queues: Vec<&str> = p
            .queues
            .iter()
            .map(String::as_str)
            .filter(|q| removed.is_none_or(|r| !r.iter().any(|x| &**x == *q)))
            .collect();
        if queues.is_empty() {
            return;
        }
        let copy = publish_payload(
            id,
            &p.vhost,
            &queues,
            &p.exchange,
            &p.routing_key,
            &p.raw_properties,
            &p.body,
        );
        record::frame(buf, &copy);
        let size = record::HEADER + copy.len();
        let delivered = entry.delivered;
        let old_size = entry.size as u64;
        if let Some(info) = self.segments.get_mut(&from) {
            info.live = info.live.saturating_sub(old_size);
        }
        self.segments.entry(self.segment).or_default().live += size as u64;
        if let Some(entry) = self.live.get_mut(&id) {
            entry.segment = self.segment;
            entry.size = size as u32;
            entry.refs = queues.len() as u16;
        }
        self.removed.remove(&id);
        if delivered {
            // After the copy, which resets the flags in recovery.
            for q in &queues {
                let d = MessageLog::small(record::DELIVERED, id, &p.vhost, q);
                record::frame_with(buf, &d, &self.segment.to_be_bytes());
            }
        }
    }

    /// The compaction of `segment` was applied up to its last chunk and
    /// synced: the old segment goes.
    fn finish_compaction(&mut self, segment: u32) {
        let Some(info) = self.segments.get(&segment) else {
            self.gc_busy = None;
            return;
        };
        if info.live > 0 {
            // Some live record was not seen in it: keep it (never reached
            // in practice; the check costs nothing).
            tracing::error!(
                segment,
                live = info.live,
                "compacted segment still holds live messages; kept"
            );
            self.abort_compaction(segment);
            return;
        }
        self.gc_busy = None;
        self.delete_segment(segment);
        tracing::debug!(segment, "message log segment compacted");
    }

    fn abort_compaction(&mut self, segment: u32) {
        if let Some((busy, copied)) = self.gc_busy.take() {
            if busy == segment && copied {
                // Records of it now have copies elsewhere: see `hazards`.
                self.hazards.insert(segment);
            }
        }
        if let Some(info) = self.segments.get_mut(&segment) {
            info.stuck = true;
        }
    }

    fn delete_segment(&mut self, segment: u32) {
        match std::fs::remove_file(segment_path(&self.dir, segment)) {
            // The deletion itself is synced (the directory) before anything
            // that relied on it can go: removal records elsewhere that kept
            // this segment's messages dead are dropped next, and a segment
            // that came back after a crash would bring those messages back.
            Ok(()) => {
                if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                    tracing::warn!("cannot sync the message log directory: {e}");
                }
            }
            Err(e) => tracing::warn!(segment, "cannot delete message log segment: {e}"),
        }
        self.segments.remove(&segment);
        self.hazards.remove(&segment);
        for info in self.segments.values_mut() {
            info.needs.remove(&segment);
        }
    }

    /// Deletes every segment that holds nothing needed, then asks for the
    /// compaction of the oldest mostly-dead one.
    fn maintain(&mut self) {
        self.delete_drained();
        self.request_compaction();
    }

    /// Deletes every segment that holds nothing needed. Also while writes
    /// fail: a removal not yet written is not needed once the segment of
    /// the message it removes is gone, and that frees space.
    fn delete_drained(&mut self) {
        if self.hazards.is_empty() {
            loop {
                let drained: Vec<u32> = self
                    .segments
                    .iter()
                    .filter(|(&n, info)| {
                        n != self.segment
                            && self.gc_busy.is_none_or(|(b, _)| b != n)
                            && info.live == 0
                            && info.needs.is_empty()
                    })
                    .map(|(&n, _)| n)
                    .collect();
                if drained.is_empty() {
                    break;
                }
                for n in drained {
                    self.delete_segment(n);
                }
            }
        }
    }

    fn request_compaction(&mut self) {
        if self.gc_busy.is_some() || self.reading_back.load(Ordering::Acquire) {
            return;
        }
        let Some(gc) = &self.gc else {
            return;
        };
        let oldest = self.segments.keys().next().copied();
        let candidate = match self
            .hazards
            .iter()
            .find(|n| self.segments.get(n).is_some_and(|info| !info.stuck))
        {
            Some(&n) => Some(n),
            None if self.hazards.is_empty() => {
                let now = std::time::Instant::now();
                let current = self.segment;
                let mut found = None;
                for (&n, info) in self.segments.iter_mut() {
                    if n != current
                        && !info.stuck
                        && (!info.legacy || Some(n) == oldest)
                        && worth_compacting(info, now)
                    {
                        found = Some(n);
                        break;
                    }
                }
                found
            }
            None => None,
        };
        if let Some(n) = candidate {
            if gc.send(n).is_ok() {
                self.gc_busy = Some((n, false));
            }
        }
    }

    /// After a failed write: cuts the segment back to its last synced
    /// record (a part of the batch may have been written).
    fn cut_back(&mut self) {
        let len = self.file.metadata().map(|m| m.len());
        self.torn = match len {
            Ok(len) if len == self.size => false,
            _ => match self.file.set_len(self.size) {
                Ok(()) => false,
                Err(e) => {
                    tracing::error!(
                        segment = self.segment,
                        "cannot cut a failed write back: {e}"
                    );
                    true
                }
            },
        };
    }

    /// Starts the next segment (the current one is synced: every write is
    /// followed by a sync).
    fn rotate(&mut self) -> anyhow::Result<()> {
        self.file = open_segment(&self.dir, self.segment + 1, self.segment_size)?;
        self.segment += 1;
        self.size = 0;
        self.segments.entry(self.segment).or_default();
        Ok(())
    }
}

/// What the writer gathers between two group commits.
#[derive(Default)]
struct Batch {
    /// Framed message log records.
    buf: BytesMut,
    /// Stream entries, one list per stream (few streams: a linear search
    /// is fine).
    streams: Vec<(Arc<StreamLog>, Vec<StreamEntry>)>,
    stream_bytes: usize,
    /// Some stream entry is persistent: its chunk is fsynced.
    stream_syncs: bool,
    ops: usize,
    max_seq: u64,
    /// Segments whose compaction completes with this batch's sync.
    compacted: Vec<u32>,
    /// Compaction chunks to answer after this batch's commit.
    gc_replies: Vec<(std::sync::mpsc::SyncSender<bool>, bool)>,
}

impl Batch {
    fn add(&mut self, op: Op, state: &mut WriterState) {
        self.ops += 1;
        match op {
            Op::Publish {
                id,
                queues,
                seq,
                payload,
            } => {
                record::frame(&mut self.buf, &payload);
                state.apply_publish(id, queues, record::HEADER + payload.len());
                self.max_seq = self.max_seq.max(seq);
            }
            Op::Remove { id, payload } => {
                let target = state.apply_remove(id, &payload);
                record::frame_with(&mut self.buf, &payload, &target.to_be_bytes());
                state.note_target(target, record::HEADER + payload.len() + 4);
            }
            Op::Delivered { id, payload } => {
                let target = state.apply_delivered(id);
                record::frame_with(&mut self.buf, &payload, &target.to_be_bytes());
                state.note_target(target, record::HEADER + payload.len() + 4);
            }
            Op::Compact {
                segment,
                records,
                end,
                done,
            } => {
                let current = state.gc_busy.is_some_and(|(b, _)| b == segment);
                let ok = current && end != ChunkEnd::Abort && {
                    // From here copies may exist (see `abort_compaction`).
                    if let Some(busy) = &mut state.gc_busy {
                        busy.1 = true;
                    }
                    state.apply_chunk(segment, &records, &mut self.buf)
                };
                if ok {
                    if end == ChunkEnd::Last {
                        self.compacted.push(segment);
                    }
                } else if current {
                    state.abort_compaction(segment);
                }
                self.gc_replies.push((done, ok));
            }
            Op::Stream { seq, log, entry } => {
                self.stream_syncs |= entry.persistent;
                self.stream_bytes +=
                    entry.message.body().len() + entry.message.raw_properties().len();
                match self.streams.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &log)) {
                    Some((_, entries)) => entries.push(entry),
                    None => self.streams.push((log, vec![entry])),
                }
                self.max_seq = self.max_seq.max(seq);
            }
            Op::Sync { seq } => self.max_seq = self.max_seq.max(seq),
        }
    }

    fn is_full(&self) -> bool {
        self.buf.len() + self.stream_bytes >= BATCH_BYTES
    }

    /// Writes and syncs the batch, then publishes the synced sequence.
    /// Returns whether it was a small batch of transient stream entries
    /// only (see `writer`).
    ///
    /// When writing fails (disk full, an I/O error) the batch's sequence
    /// numbers are decided as failed (their publishers get nacks), the
    /// failure is raised (the broker's disk alarm), and the batch is kept
    /// to be written again: what it holds stays in the queues in memory,
    /// and the removals in it must reach the disk some day.
    fn commit(
        &mut self,
        state: &mut WriterState,
        synced: &watch::Sender<u64>,
        failures: &WriteFailures,
    ) -> bool {
        let small_transient = self.buf.is_empty()
            && !self.streams.is_empty()
            && !self.stream_syncs
            && self.ops < COALESCE_BELOW;
        let max_seq = std::mem::take(&mut self.max_seq);
        if let Err(e) = self.write(state) {
            if failures.set_failing(true) {
                tracing::error!(
                    "{e:#}; publishes are nacked and publishers blocked (disk alarm) until a write succeeds again"
                );
            }
            let from = *synced.borrow() + 1;
            if max_seq >= from {
                failures.record(from, max_seq);
                synced.send_replace(max_seq);
            }
            state.delete_drained();
            return false;
        }
        if failures.set_failing(false) {
            tracing::info!("message log writes again: disk alarm cleared");
        }
        if max_seq > 0 {
            synced.send_if_modified(|s| {
                let changed = max_seq > *s;
                *s = (*s).max(max_seq);
                changed
            });
        }
        self.stream_bytes = 0;
        self.stream_syncs = false;
        self.ops = 0;
        if state.size >= state.segment_size {
            if let Err(e) = state.rotate() {
                // Tried again after the next batch; the segment grows meanwhile.
                tracing::warn!("message log rotation failed: {e:#}");
            }
        }
        state.maintain();
        small_transient
    }

    /// Writes and syncs what the batch holds. On an error what was not
    /// stored stays in the batch, and the segment is cut back to its last
    /// synced record so that the next try appends right after it.
    fn write(&mut self, state: &mut WriterState) -> anyhow::Result<()> {
        // Each batch that writes syncs, so a batch without writes (only a
        // Sync, or only stream entries) has nothing of its own to sync.
        if !self.buf.is_empty() {
            if state.torn {
                state.cut_back();
                anyhow::ensure!(!state.torn, "message log segment could not be cut back");
            }
            let written = state
                .file
                .write_all(&self.buf)
                .context("message log write failed")
                .and_then(|()| {
                    state
                        .file
                        .sync_data()
                        .context("message log fdatasync failed")
                });
            if let Err(e) = written {
                state.cut_back();
                return Err(e);
            }
            state.size += self.buf.len() as u64;
            self.buf.clear();
            state.segments.entry(state.segment).or_default().size = state.size;
        }
        // Only now, with the copies synced, may a compacted segment go.
        for segment in self.compacted.drain(..) {
            state.finish_compaction(segment);
        }
        for (done, ok) in self.gc_replies.drain(..) {
            let _ = done.send(ok);
        }
        let mut failed = None;
        self.streams
            .retain(|(log, entries)| match log.commit(entries) {
                Ok(()) => false,
                Err(_) if log.is_deleted() => false,
                Err(e) => {
                    failed.get_or_insert(e);
                    true
                }
            });
        match failed {
            Some(e) => Err(e).context("stream write failed"),
            None => Ok(()),
        }
    }
}

/// How often a writer whose writes fail tries again when nothing new comes.
const RETRY_FAILED: std::time::Duration = std::time::Duration::from_millis(500);

fn writer(
    mut state: WriterState,
    inbox: &Inbox<Op>,
    synced: watch::Sender<u64>,
    failures: &WriteFailures,
) {
    let mut batch = Batch {
        buf: BytesMut::with_capacity(1 << 20),
        ..Batch::default()
    };
    let mut ops = Vec::new();
    // Without an fsync to wait for (transient stream entries), the writer
    // is faster than any one publisher and would write a chunk of a few
    // messages per syscall (1M x 100 B: ~240k writes and watch wake-ups).
    // So when the last batch was such a small one and more work was
    // already waiting, it pauses briefly to gather a real chunk. It only
    // pauses under load: a lone message is written at once.
    let mut coalesce = false;
    // While writes fail: when to try again (not on every op, which would
    // rewrite the kept batch for each ack that comes in).
    let mut retry_at: Option<std::time::Instant> = None;
    loop {
        let waiting_since = std::time::Instant::now();
        // While idle, look again now and then: compaction waits for the
        // recovered messages to be read back, and nothing else may come to
        // start it; a failed batch is tried again.
        let open = if retry_at.is_some() {
            inbox.take_timeout(&mut ops, RETRY_FAILED)
        } else if state.gc_busy.is_none() && state.gc.is_some() {
            inbox.take_timeout(&mut ops, IDLE_MAINTENANCE)
        } else {
            inbox.take(&mut ops, true)
        };
        if !open {
            break;
        }
        let retry_due = retry_at.is_some_and(|at| at <= std::time::Instant::now());
        if ops.is_empty() && !retry_due {
            if retry_at.is_none() {
                state.maintain();
            }
            continue;
        }
        if coalesce && waiting_since.elapsed() < BUSY_TAKE {
            std::thread::sleep(COALESCE_PAUSE);
            inbox.take(&mut ops, false);
        }
        // A failed batch keeps its ops (see `Batch::commit`).
        let mut failed = false;
        for op in ops.drain(..) {
            batch.add(op, &mut state);
            if !failed && retry_at.is_none() && batch.is_full() {
                coalesce = batch.commit(&mut state, &synced, failures);
                failed = batch.ops > 0;
            }
        }
        if batch.ops > 0 && !failed && (retry_at.is_none() || retry_due) {
            coalesce = batch.commit(&mut state, &synced, failures);
        }
        retry_at = match retry_at {
            _ if batch.ops == 0 => None,
            Some(at) if !retry_due => Some(at),
            _ => Some(std::time::Instant::now() + RETRY_FAILED),
        };
    }
    // Closed: what a failed batch still holds is lost; its publishers
    // were nacked.
    if batch.ops > 0 {
        tracing::warn!("message log closed with unwritten records (writes were failing)");
    }
}

/// Reads every segment, truncating a torn tail, and rebuilds what is live.
fn recover(dir: &Path, options: LogOptions) -> anyhow::Result<(WriterState, Recovered, u64)> {
    let mut numbers: Vec<u32> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut index = LiveIndex::default();
    let mut recovered = Recovered::default();
    let mut sizes = BTreeMap::new();
    for (position, &n) in numbers.iter().enumerate() {
        let path = segment_path(dir, n);
        let scan = scan_segment(&path, |offset, payload| {
            index.apply(n, offset, payload);
            true
        })
        .with_context(|| format!("cannot read {}", path.display()))?;
        for &(offset, len) in &scan.skipped {
            tracing::error!(
                segment = n,
                offset,
                len,
                "corrupt record inside the message log skipped; the intact records after it are kept"
            );
            recovered.dropped_bytes += len as u64;
            recovered.corrupt_records.push((n, offset));
        }
        sizes.insert(n, scan.file_len);
        if scan.end < scan.file_len {
            let pos = scan.end;
            let dropped = scan.file_len - pos;
            recovered.dropped_bytes += dropped;
            if position + 1 == numbers.len() {
                tracing::warn!(
                    segment = n,
                    offset = pos,
                    dropped,
                    "truncating torn or corrupt tail of the message log"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(pos)?;
                file.sync_all()?;
                sizes.insert(n, pos);
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
    let mut segments: BTreeMap<u32, SegmentInfo> = numbers
        .iter()
        .map(|&n| {
            let info = SegmentInfo {
                size: sizes.get(&n).copied().unwrap_or(0),
                needs: index.needs.remove(&n).unwrap_or_default(),
                legacy: index.legacy.contains(&n),
                ..SegmentInfo::default()
            };
            (n, info)
        })
        .collect();
    let mut live = HashMap::with_capacity(index.live.len());
    for (id, record) in &index.live {
        segments.entry(record.segment).or_default().live += record.size as u64;
        live.insert(
            *id,
            LiveMessage {
                segment: record.segment,
                size: record.size,
                refs: record.holders.len().min(u16::MAX as usize) as u16,
                delivered: record.holders.iter().any(|(_, d)| *d),
                multi: record.queues > 1,
            },
        );
    }
    let removed = index
        .removed
        .iter()
        .map(|(id, queues)| {
            let names = queues
                .iter()
                .filter_map(|&q| index.queue_names.get(q as usize))
                .map(|q| q.as_str().into())
                .collect();
            (*id, names)
        })
        .collect();
    let segment = numbers.last().copied().unwrap_or(0);
    let file = open_segment(dir, segment, options.segment_size)?;
    let size = file.metadata()?.len();
    segments.entry(segment).or_default().size = size;
    if !index.hazards.is_empty() {
        tracing::warn!(
            segments = ?index.hazards,
            "finishing compactions interrupted by a stop"
        );
    }
    let reading_back = Arc::new(AtomicBool::new(!index.live.is_empty()));
    let mut state = WriterState {
        dir: dir.to_path_buf(),
        segment_size: options.segment_size,
        segment,
        file,
        size,
        live,
        removed,
        segments,
        hazards: std::mem::take(&mut index.hazards),
        gc: None,
        gc_busy: None,
        reading_back: reading_back.clone(),
        torn: false,
    };
    state.maintain();
    let max_id = index.max_id;
    recovered.messages = RecoveredMessages {
        dir: dir.to_path_buf(),
        live: index.live,
        queue_names: index.queue_names,
        window: None,
        reading: Some(reading_back),
    };
    Ok((state, recovered, max_id + 1))
}

/// What a scan of a segment found.
pub(super) struct Scan {
    /// Where the readable part ends.
    pub end: u64,
    pub file_len: u64,
    /// (offset, length) of corrupt records that were skipped because an
    /// intact record follows them.
    pub skipped: Vec<(u64, usize)>,
}

/// Calls `each` with the offset and payload of every intact record of a
/// segment, reading it a window at a time, until it returns false. A
/// corrupt record whose length field leads to an intact record is skipped
/// (and reported); otherwise the readable part ends at it.
pub(super) fn scan_segment(
    path: &Path,
    mut each: impl FnMut(u64, Bytes) -> bool,
) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut start = 0;
    let mut window = read_at_most(&file, 0, READ_WINDOW)?;
    let mut pos = 0;
    let mut skipped = Vec::new();
    loop {
        if let Some((payload, next)) = record::read(&window, pos) {
            if !each(start + pos as u64, payload) {
                return Ok(Scan {
                    end: start + next as u64,
                    file_len,
                    skipped,
                });
            }
            pos = next;
            continue;
        }
        let at = start + pos as u64;
        let len = record::plausible_len(&window, pos);
        let need = record::HEADER + len.unwrap_or(0);
        let whole_record_seen = window.len() - pos >= need;
        let at_eof = start + window.len() as u64 >= file_len;
        if !whole_record_seen && !at_eof {
            // The record runs past the window: read on from it, enough to
            // hold the whole record.
            start = at;
            window = read_at_most(&file, at, READ_WINDOW.max(need))?;
            pos = 0;
            continue;
        }
        if let (Some(len), true) = (len, whole_record_seen) {
            // A whole record with a bad checksum: skip it if its length
            // leads to an intact record (a torn tail has none after it).
            let next_at = at + (record::HEADER + len) as u64;
            if let Some(next) = intact_record_at(&file, next_at, file_len)? {
                skipped.push((at, record::HEADER + len));
                start = next_at;
                window = next;
                pos = 0;
                continue;
            }
        }
        return Ok(Scan {
            end: at,
            file_len,
            skipped,
        });
    }
}

/// A window of `file` from `at` if an intact record starts there.
fn intact_record_at(file: &File, at: u64, file_len: u64) -> std::io::Result<Option<Bytes>> {
    if at + record::HEADER as u64 > file_len {
        return Ok(None);
    }
    let head = read_at_most(file, at, record::HEADER)?;
    let Some(len) = record::plausible_len(&head, 0) else {
        return Ok(None);
    };
    let window = read_at_most(file, at, READ_WINDOW.max(record::HEADER + len))?;
    Ok(record::read(&window, 0).is_some().then_some(window))
}

/// What the first pass of recovery builds: the live messages' locations
/// and holders, with queue names interned, and what the writer needs to
/// know of each segment.
#[derive(Default)]
struct LiveIndex {
    live: BTreeMap<u64, LiveRecord>,
    queue_names: Vec<String>,
    queue_ids: HashMap<String, u32>,
    max_id: u64,
    /// Queues removed from multi-queue live messages since their record.
    removed: HashMap<u64, Vec<u32>>,
    /// segment -> (target segment -> bytes of records needed while it exists)
    needs: BTreeMap<u32, BTreeMap<u32, u64>>,
    /// Segments with removal records that name no target.
    legacy: BTreeSet<u32>,
    /// Segments holding a publish record that a later copy replaced.
    hazards: BTreeSet<u32>,
}

impl LiveIndex {
    fn queue_id(&mut self, name: String) -> u32 {
        if let Some(&id) = self.queue_ids.get(&name) {
            return id;
        }
        let id = self.queue_names.len() as u32;
        self.queue_names.push(name.clone());
        self.queue_ids.insert(name, id);
        id
    }

    /// Applies the record at `offset` of `segment`.
    fn apply(&mut self, segment: u32, offset: u64, payload: Bytes) {
        let size = record::HEADER + payload.len();
        let mut r = Reader(payload.clone());
        let parsed = (|| {
            let kind = r.u8()?;
            let id = r.u64()?;
            self.max_id = self.max_id.max(id);
            match kind {
                record::PUBLISH => {
                    let publish = parse_publish(payload)?;
                    let queues = publish.queues.len();
                    let holders = publish
                        .queues
                        .into_iter()
                        .map(|q| (self.queue_id(q), false))
                        .collect();
                    // A copy made by compaction replaces the earlier record
                    // (it lists the queues that still held the message).
                    let earlier = self.live.insert(
                        id,
                        LiveRecord {
                            segment,
                            offset,
                            size: size as u32,
                            queues: queues.min(u16::MAX as usize) as u16,
                            holders,
                        },
                    );
                    if let Some(earlier) = earlier {
                        if earlier.segment != segment {
                            self.hazards.insert(earlier.segment);
                        }
                    }
                    self.removed.remove(&id);
                }
                record::ACK | record::DELIVERED => {
                    let removal = parse_removal(payload)?;
                    if removal.target.is_none() {
                        self.legacy.insert(segment);
                    }
                    let queue = std::str::from_utf8(&removal.queue).ok()?;
                    let Some(&queue) = self.queue_ids.get(queue) else {
                        return Some(());
                    };
                    let Some(m) = self.live.get_mut(&id) else {
                        return Some(());
                    };
                    let Some(holder) = m.holders.iter().position(|(q, _)| *q == queue) else {
                        return Some(());
                    };
                    // It took effect on the record in `m.segment`: needed
                    // as long as that segment is there.
                    if m.segment != segment {
                        *self
                            .needs
                            .entry(segment)
                            .or_default()
                            .entry(m.segment)
                            .or_default() += size as u64;
                    }
                    if kind == record::ACK {
                        m.holders.remove(holder);
                        if m.holders.is_empty() {
                            self.live.remove(&id);
                            self.removed.remove(&id);
                        } else {
                            self.removed.entry(id).or_default().push(queue);
                        }
                    } else {
                        m.holders[holder].1 = true;
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
        assert!(recovered.dropped_bytes > 0);
        let bodies: Vec<Bytes> = recovered.messages.map(|m| m.body).collect();
        assert_eq!(bodies, vec![Bytes::from_static(b"kept")]);
    }

    /// Records cross the read-ahead windows at every boundary, and one is
    /// larger than a window: all come back, in order, with their holders.
    #[tokio::test]
    async fn recovery_reads_records_across_and_beyond_its_windows() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; READ_WINDOW + 12345];
        let body = |i: usize| format!("message {i} ").repeat(300).into_bytes();
        {
            let (log, _) = MessageLog::open(dir.path()).unwrap();
            log.append("/", &["q"], "", "q", &[0, 0], &big);
            for i in 0..4000 {
                let (id, _) = log.append("/", &["q", "r"], "x", "k", &[0, 0], &body(i));
                if i % 2 == 0 {
                    log.remove(id, "/", "r");
                }
            }
            log.sync().await;
        }
        let (_log, recovered) = MessageLog::open(dir.path()).unwrap();
        assert_eq!(recovered.dropped_bytes, 0);
        assert_eq!(recovered.messages.len(), 4001);
        let mut messages = recovered.messages;
        assert_eq!(messages.next().unwrap().body, big);
        for (i, m) in messages.enumerate() {
            assert_eq!(m.body, body(i), "message {i}");
            let holders: Vec<&str> = m.queues.iter().map(|(q, _)| q.as_str()).collect();
            let expected: &[&str] = if i % 2 == 0 { &["q"] } else { &["q", "r"] };
            assert_eq!(holders, expected, "message {i}");
        }
    }

    /// Segments get their blocks reserved when created, while their length
    /// stays what was written (recovery reads exactly the records).
    #[tokio::test]
    async fn segments_are_preallocated_without_growing() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = MessageLog::open(dir.path()).unwrap();
        log.append("/", &["q"], "", "q", &[0, 0], b"one");
        log.sync().await;
        let meta = std::fs::metadata(segment_path(dir.path(), 0)).unwrap();
        // Whether this file system can reserve blocks at all.
        let probe = OpenOptions::new()
            .write(true)
            .open(dir.path().join("probe"))
            .or_else(|_| File::create(dir.path().join("probe")))
            .unwrap();
        if preallocate(&probe, DEFAULT_SEGMENT_SIZE) {
            assert!(
                meta.blocks() * 512 >= DEFAULT_SEGMENT_SIZE,
                "{} blocks",
                meta.blocks()
            );
        }
        assert!(meta.len() < 100, "length {}", meta.len());
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    fn small_segments() -> LogOptions {
        LogOptions {
            segment_size: MIN_SEGMENT_SIZE,
        }
    }

    /// Syncs until `done` holds (compaction runs on its own thread).
    async fn settle(log: &MessageLog, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            log.sync().await;
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("compaction did not settle");
    }

    /// Traffic through `q`: each message removed right after.
    fn churn(log: &MessageLog, count: usize) {
        let body = vec![b'x'; 1000];
        for _ in 0..count {
            let (id, _) = log.append("/", &["q"], "", "q", &[0, 0], &body);
            log.remove(id, "/", "q");
        }
    }

    /// A recovered message: id, body, and (queue, delivered) pairs.
    type RecoveredSummary = (u64, Vec<u8>, Vec<(String, bool)>);

    fn recovered_of(dir: &Path) -> Vec<RecoveredSummary> {
        let (_log, recovered) = MessageLog::open_with(dir, small_segments()).unwrap();
        recovered
            .messages
            .map(|m| (m.id, m.body.to_vec(), m.queues.clone()))
            .collect()
    }

    /// One old message no longer pins the log: its segment is compacted
    /// and the drained ones after it deleted. The message keeps its id,
    /// its remaining queue and its delivered flag (a repeated removal from
    /// the other queue does not count twice), and an ack written after the
    /// copy still removes it after a restart.
    #[tokio::test]
    async fn an_old_message_is_moved_forward_and_the_log_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let pinned;
        {
            let (log, _) = MessageLog::open_with(dir.path(), small_segments()).unwrap();
            (pinned, _) = log.append("/", &["p1", "p2"], "", "p", &[0, 0], b"pinned");
            log.remove(pinned, "/", "p1");
            // Twice: still held by p2.
            log.remove(pinned, "/", "p1");
            log.delivered(pinned, "/", "p2");
            churn(&log, 3000);
            // ~3 MB went through 64 KiB segments.
            settle(&log, || segment_files(dir.path()).len() <= 3).await;
        }
        let got = recovered_of(dir.path());
        assert_eq!(
            got,
            vec![(pinned, b"pinned".to_vec(), vec![("p2".to_string(), true)])]
        );
        {
            let (log, _) = MessageLog::open_with(dir.path(), small_segments()).unwrap();
            churn(&log, 500);
            log.remove(pinned, "/", "p2");
            churn(&log, 500);
            settle(&log, || segment_files(dir.path()).len() <= 3).await;
        }
        assert!(recovered_of(dir.path()).is_empty());
    }

    /// The id of the message added to the first segment by
    /// `interrupted_compaction`.
    const NOT_YET_COPIED: u64 = 1 << 40;

    /// The state a crash leaves in the middle of a compaction: the first
    /// segment is back (its copy of `pinned`, taken before `p1` acked it,
    /// was moved forward and deleted), and a message that had not been
    /// copied yet is in it. Returns `pinned`'s id.
    async fn interrupted_compaction(dir: &Path) -> u64 {
        let first = segment_path(dir, 0);
        let saved = dir.join("saved");
        let pinned;
        {
            let (log, _) = MessageLog::open_with(dir, small_segments()).unwrap();
            (pinned, _) = log.append("/", &["p1", "p2"], "", "p", &[0, 0], b"pinned");
            churn(&log, 100);
            log.sync().await;
            std::fs::copy(&first, &saved).unwrap();
            log.remove(pinned, "/", "p1");
            churn(&log, 1000);
            settle(&log, || !first.exists()).await;
        }
        let mut data = std::fs::read(&saved).unwrap();
        let mut extra = BytesMut::new();
        let p = publish_payload(NOT_YET_COPIED, "/", &["y"], "", "y", &[0, 0], b"y");
        record::frame(&mut extra, &p);
        data.extend_from_slice(&extra);
        std::fs::write(&first, data).unwrap();
        std::fs::remove_file(&saved).unwrap();
        pinned
    }

    /// After such a crash the message comes back once, with the queue
    /// that still held it; once acked it stays gone, however the segments
    /// holding its copy and its ack are compacted later.
    #[tokio::test]
    async fn an_interrupted_compaction_neither_duplicates_nor_resurrects() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = interrupted_compaction(dir.path()).await;
        let got = recovered_of(dir.path());
        assert_eq!(
            got,
            vec![
                (pinned, b"pinned".to_vec(), vec![("p2".to_string(), false)]),
                (
                    NOT_YET_COPIED,
                    b"y".to_vec(),
                    vec![("y".to_string(), false)]
                ),
            ]
        );
        {
            let (log, recovered) = MessageLog::open_with(dir.path(), small_segments()).unwrap();
            drop(recovered);
            log.remove(pinned, "/", "p2");
            churn(&log, 2000);
            let first = segment_path(dir.path(), 0);
            settle(&log, || {
                !first.exists() && segment_files(dir.path()).len() <= 3
            })
            .await;
        }
        let got = recovered_of(dir.path());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, NOT_YET_COPIED);
    }

    /// Until that compaction is finished, no segment is deleted: the one
    /// holding the copy could otherwise go first, and the original come
    /// back.
    #[tokio::test]
    async fn nothing_is_deleted_before_an_interrupted_compaction_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = interrupted_compaction(dir.path()).await;
        let (mut state, recovered, _) = recover(dir.path(), small_segments()).unwrap();
        drop(recovered);
        assert_eq!(state.hazards.iter().copied().collect::<Vec<_>>(), vec![0]);
        let before = segment_files(dir.path());
        let ack = MessageLog::small(record::ACK, pinned, "/", "p2");
        state.apply_remove(pinned, &ack);
        state.maintain();
        assert_eq!(segment_files(dir.path()), before);
    }

    /// A record with a bad checksum in the middle of a segment is reported
    /// and skipped; the intact records after it are kept.
    #[tokio::test]
    async fn a_corrupt_record_in_the_middle_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = MessageLog::open(dir.path()).unwrap();
            for body in [b"one", b"two", b"six"] {
                log.append("/", &["q"], "", "q", &[0, 0], body);
            }
            log.sync().await;
        }
        let seg = segment_path(dir.path(), 0);
        let mut data = std::fs::read(&seg).unwrap();
        let second = data.windows(3).position(|w| w == b"two").unwrap();
        data[second] ^= 0xFF;
        let len = data.len();
        std::fs::write(&seg, &data).unwrap();
        let (_log, recovered) = MessageLog::open(dir.path()).unwrap();
        assert_eq!(recovered.corrupt_records.len(), 1);
        assert!(recovered.dropped_bytes > 0);
        let bodies: Vec<Bytes> = recovered.messages.map(|m| m.body).collect();
        assert_eq!(bodies, vec![&b"one"[..], &b"six"[..]]);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len as u64);
    }

    /// A bad last record is a torn tail: truncated, as before.
    #[tokio::test]
    async fn a_corrupt_last_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = MessageLog::open(dir.path()).unwrap();
            for body in [b"one", b"two"] {
                log.append("/", &["q"], "", "q", &[0, 0], body);
            }
            log.sync().await;
        }
        let seg = segment_path(dir.path(), 0);
        let mut data = std::fs::read(&seg).unwrap();
        let n = data.len();
        data[n - 1] ^= 0xFF;
        std::fs::write(&seg, &data).unwrap();
        let (_log, recovered) = MessageLog::open(dir.path()).unwrap();
        assert!(recovered.corrupt_records.is_empty());
        let bodies: Vec<Bytes> = recovered.messages.map(|m| m.body).collect();
        assert_eq!(bodies, vec![&b"one"[..]]);
        assert!(std::fs::metadata(&seg).unwrap().len() < n as u64);
    }
}

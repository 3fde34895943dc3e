//! The message log: persistent messages of durable queues, appended to
//! segment files by one writer thread that group-commits (one `fdatasync`
//! for everything that arrived while the previous one ran). Publisher
//! confirms wait for the sync that covers their message.
//!
//! A message routed to several durable queues is stored once; acks (and
//! anything else that removes it from a queue) append small records. A
//! segment is deleted once it and every older segment hold no live message,
//! so acks never outlive the messages they refer to.

use super::inbox::Inbox;
use super::record::{self, Reader};
use super::stream_log::{StreamEntry, StreamLog};
use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// A new segment is started once the current one reaches this size.
const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Most bytes written per group commit.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// A batch of stream entries that needed no fsync, found already waiting,
/// with fewer ops than this makes the writer pause before the next one
/// (see `writer`).
const COALESCE_BELOW: usize = 256;
/// How long such a pause lasts (the kernel's timer slack adds ~50 µs).
const COALESCE_PAUSE: std::time::Duration = std::time::Duration::from_micros(50);
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
    pub messages: RecoveredMessages,
    pub dropped_bytes: u64,
}

/// Where a live message's publish record is, and which queues still hold
/// it: all that recovery keeps in memory per message, so that a restart
/// with a backlog larger than memory does not hold every body at once.
struct LiveRecord {
    segment: u32,
    offset: u64,
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
        let inbox = Arc::new(Inbox::new(1));
        let writer_inbox = inbox.clone();
        let (synced_tx, synced_rx) = watch::channel(0u64);
        std::thread::Builder::new()
            .name("message-log".into())
            .spawn(move || writer(state, &writer_inbox, synced_tx))
            .context("cannot start the message log writer")?;
        Ok((
            MessageLog {
                inbox,
                next_id: AtomicU64::new(next_id),
                synced: synced_rx,
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

impl Drop for MessageLog {
    /// The writer stores what it was given, then ends.
    fn drop(&mut self) {
        self.inbox.close();
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
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, n))
        .with_context(|| format!("cannot open segment {n}"))?;
    preallocate(&file);
    Ok(file)
}

/// Reserves a segment's blocks up front (without changing its length, so
/// readers and recovery still see exactly what was written): appends then
/// never wait for the file system to allocate, and the segment is less
/// fragmented. A file system without `fallocate` just appends as before.
/// True if the blocks were reserved.
fn preallocate(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            SEGMENT_SIZE as libc::off_t,
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
                state.apply_publish(id, queues);
                self.max_seq = self.max_seq.max(seq);
            }
            Op::Remove { id, payload } => {
                record::frame(&mut self.buf, &payload);
                state.apply_remove(id);
            }
            Op::Delivered { payload } => record::frame(&mut self.buf, &payload),
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
    /// only (see `writer`); an I/O error stops the writer.
    fn commit(
        &mut self,
        state: &mut WriterState,
        synced: &watch::Sender<u64>,
    ) -> anyhow::Result<bool> {
        let small_transient = self.buf.is_empty()
            && !self.streams.is_empty()
            && !self.stream_syncs
            && self.ops < COALESCE_BELOW;
        // Each batch that writes syncs, so a batch without writes (only a
        // Sync, or only stream entries) has nothing of its own to sync.
        if !self.buf.is_empty() {
            // Without the write, nothing may be confirmed: stop here.
            state
                .file
                .write_all(&self.buf)
                .context("message log write failed, no further confirms")?;
            state.size += self.buf.len() as u64;
            self.buf.clear();
            state
                .file
                .sync_data()
                .context("message log fdatasync failed, no further confirms")?;
        }
        for (log, entries) in self.streams.drain(..) {
            if let Err(e) = log.commit(entries) {
                if !log.is_deleted() {
                    return Err(e).context("stream write failed, no further confirms");
                }
            }
        }
        let max_seq = std::mem::take(&mut self.max_seq);
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
        if state.size >= SEGMENT_SIZE {
            state.rotate().context("message log rotation failed")?;
        }
        state.reclaim();
        Ok(small_transient)
    }
}

fn writer(mut state: WriterState, inbox: &Inbox<Op>, synced: watch::Sender<u64>) {
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
    loop {
        let waiting_since = std::time::Instant::now();
        if !inbox.take(&mut ops, true) {
            break;
        }
        if coalesce && waiting_since.elapsed() < BUSY_TAKE {
            std::thread::sleep(COALESCE_PAUSE);
            inbox.take(&mut ops, false);
        }
        let mut result = Ok(false);
        for op in ops.drain(..) {
            batch.add(op, &mut state);
            if batch.is_full() {
                result = batch.commit(&mut state, &synced);
                if result.is_err() {
                    break;
                }
            }
        }
        if result.is_ok() && batch.ops > 0 {
            result = batch.commit(&mut state, &synced);
        }
        match result {
            Ok(small_transient) => coalesce = small_transient,
            Err(e) => {
                tracing::error!("{e:#}");
                inbox.close();
                return;
            }
        }
    }
}

/// Reads every segment, truncating a torn tail, and rebuilds what is live.
fn recover(dir: &Path) -> anyhow::Result<(WriterState, Recovered, u64)> {
    let mut numbers: Vec<u32> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut index = LiveIndex::default();
    let mut recovered = Recovered::default();
    for (position, &n) in numbers.iter().enumerate() {
        let path = segment_path(dir, n);
        let (pos, file_len) =
            scan_segment(&path, |offset, payload| index.apply(n, offset, payload))
                .with_context(|| format!("cannot read {}", path.display()))?;
        if pos < file_len {
            let dropped = file_len - pos;
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
    for (id, record) in &index.live {
        *segments.entry(record.segment).or_default() += record.holders.len() as u64;
        live.insert(*id, (record.segment, record.holders.len() as u32));
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
    let max_id = index.max_id;
    recovered.messages = RecoveredMessages {
        dir: dir.to_path_buf(),
        live: index.live,
        queue_names: index.queue_names,
        window: None,
    };
    Ok((state, recovered, max_id + 1))
}

/// Calls `each` with the offset and payload of every intact record of a
/// segment, reading it a window at a time; returns where the readable part
/// ends and the file's length.
fn scan_segment(path: &Path, mut each: impl FnMut(u64, Bytes)) -> std::io::Result<(u64, u64)> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut start = 0;
    let mut window = read_at_most(&file, 0, READ_WINDOW)?;
    let mut pos = 0;
    loop {
        if let Some((payload, next)) = record::read(&window, pos) {
            each(start + pos as u64, payload);
            pos = next;
            continue;
        }
        let at = start + pos as u64;
        let need = match window.get(pos..pos + 4) {
            Some(len) => {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                record::HEADER + len.min(record::MAX_RECORD)
            }
            None => record::HEADER,
        };
        let whole_record_seen = window.len() - pos >= need;
        if (pos == 0 && whole_record_seen) || start + window.len() as u64 >= file_len {
            // A bad record, or the end of the file: the readable log ends here.
            return Ok((at, file_len));
        }
        // The record runs past the window: read on from it, enough to hold
        // the whole record.
        start = at;
        window = read_at_most(&file, at, READ_WINDOW.max(need))?;
        pos = 0;
    }
}

/// What the first pass of recovery builds: the live messages' locations
/// and holders, with queue names interned.
#[derive(Default)]
struct LiveIndex {
    live: BTreeMap<u64, LiveRecord>,
    queue_names: Vec<String>,
    queue_ids: HashMap<String, u32>,
    max_id: u64,
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
        let mut r = Reader(payload.clone());
        let parsed = (|| {
            let kind = r.u8()?;
            let id = r.u64()?;
            self.max_id = self.max_id.max(id);
            match kind {
                record::PUBLISH => {
                    let publish = parse_publish(payload)?;
                    let holders = publish
                        .queues
                        .into_iter()
                        .map(|q| (self.queue_id(q), false))
                        .collect();
                    self.live.insert(
                        id,
                        LiveRecord {
                            segment,
                            offset,
                            holders,
                        },
                    );
                }
                record::ACK | record::DELIVERED => {
                    let _vhost = r.str()?;
                    let queue = r.str()?;
                    let Some(&queue) = self.queue_ids.get(&queue) else {
                        return Some(());
                    };
                    if let Some(m) = self.live.get_mut(&id) {
                        if kind == record::ACK {
                            m.holders.retain(|(q, _)| *q != queue);
                            if m.holders.is_empty() {
                                self.live.remove(&id);
                            }
                        } else if let Some(entry) = m.holders.iter_mut().find(|(q, _)| *q == queue)
                        {
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
        if preallocate(&probe) {
            assert!(
                meta.blocks() * 512 >= SEGMENT_SIZE,
                "{} blocks",
                meta.blocks()
            );
        }
        assert!(meta.len() < 100, "length {}", meta.len());
    }
}

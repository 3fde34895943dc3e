//! Paging: a queue keeps message bodies in memory only up to a bound;
//! beyond it messages are written to the queue's page file and only a
//! compact [`Entry`] (24 bytes) stays in memory. They are read back, in
//! batches, when they reach the head.
//!
//! Page files are a cache, never synced and never read after a restart:
//! persistent messages are also in the message log, whose durability and
//! confirms do not depend on paging. They live in one directory per broker
//! (stale ones of dead processes are removed) and are deleted when their
//! queue is purged, deleted or dropped.
//!
//! Bounds: per queue `x-max-in-memory-length` / `x-max-in-memory-bytes`
//! (RabbitMQ's quorum-queue arguments of the same meaning), otherwise
//! [`DEFAULT_QUEUE_MEMORY_BYTES`]; and over all queues of a broker
//! [`DEFAULT_GLOBAL_MEMORY_BYTES`] (see [`PageBudget::set_limits`]).
//!
//! All of it is per broker, in its [`PageBudget`]: brokers sharing a
//! process (tests, a cluster run in one process) share no paging state.

use super::page_io::{PageIo, ReadAhead, WriteProgress};
use super::QueuedMessage;
use crate::broker::message::Message;
use crate::protocol::FieldTable;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// In-memory bytes a queue may hold before it pages (unless its arguments
/// say otherwise).
pub const DEFAULT_QUEUE_MEMORY_BYTES: usize = 8 << 20;
/// In-memory bytes over all queues; past it, queues holding at least
/// [`GLOBAL_MIN_QUEUE_BYTES`] page too.
pub const DEFAULT_GLOBAL_MEMORY_BYTES: usize = 256 << 20;
const GLOBAL_MIN_QUEUE_BYTES: usize = 1 << 20;

/// A page segment is closed once it holds this much; a segment whose
/// messages all left is deleted.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Writes are buffered up to this much, then handed to the page I/O
/// thread.
const WRITE_BUFFER: usize = 128 << 10;
/// Handed-over bytes not yet written beyond which a queue waits for the
/// page I/O thread (a disk slower than the queue fills).
const MAX_UNWRITTEN: usize = 16 << 20;
/// Read-ahead: at most this many messages / bytes per read.
const READ_BATCH: usize = 256;
const READ_BATCH_BYTES: u64 = 1 << 20;

/// Counted against the memory bound for each in-memory message beside its
/// body, properties and names.
const MESSAGE_OVERHEAD: usize =
    std::mem::size_of::<Message>() + std::mem::size_of::<QueuedMessage>() + 64;

/// One broker's paging: where its page files go, the default per-queue
/// and the global in-memory bounds, the in-memory bytes of all its queues
/// and the numbering of its page files. Owned by the `Broker`; each of its
/// queues holds an `Arc` of it.
#[derive(Debug)]
pub struct PageBudget {
    queue_bytes: AtomicUsize,
    global_bytes: AtomicUsize,
    /// In-memory bytes of ready messages over all queues.
    in_memory: AtomicUsize,
    next_file: AtomicU64,
    dir: PageDir,
    /// Expiry times in page records are nanoseconds after this.
    base: Instant,
    /// The page I/O thread, started when a queue first pages (`None` in
    /// it: could not be started, queues do their I/O themselves).
    io: OnceLock<Option<PageIo>>,
}

#[derive(Debug)]
enum PageDir {
    /// Given by the broker (e.g. `<data_dir>/pages`).
    Given(PathBuf),
    /// One of its own in the system temp directory, made at first use and
    /// removed with the budget.
    Temp(OnceLock<PathBuf>),
}

impl Default for PageBudget {
    fn default() -> Self {
        Self::with_dir(PageDir::Temp(OnceLock::new()))
    }
}

impl PageBudget {
    fn with_dir(dir: PageDir) -> Self {
        PageBudget {
            queue_bytes: AtomicUsize::new(DEFAULT_QUEUE_MEMORY_BYTES),
            global_bytes: AtomicUsize::new(DEFAULT_GLOBAL_MEMORY_BYTES),
            in_memory: AtomicUsize::new(0),
            next_file: AtomicU64::new(1),
            dir,
            base: Instant::now(),
            io: OnceLock::new(),
        }
    }

    /// Waits until the page I/O thread has done everything asked of it
    /// so far (files written, truncated, deleted).
    pub fn settle_io(&self) {
        if let Some(Some(io)) = self.io.get() {
            io.settle();
        }
    }

    fn io(&self) -> Option<&PageIo> {
        self.io
            .get_or_init(|| match PageIo::start() {
                Ok(io) => Some(io),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the page I/O thread; queues page in place");
                    None
                }
            })
            .as_ref()
    }

    /// Page files in `dir` (e.g. `<data_dir>/pages`), emptied now: page
    /// files never outlive their broker's queues.
    pub fn in_dir(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "page") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self::with_dir(PageDir::Given(dir.to_path_buf())))
    }

    /// Sets the default per-queue and the global in-memory bounds (bytes).
    pub fn set_limits(&self, queue_bytes: usize, global_bytes: usize) {
        self.queue_bytes.store(queue_bytes, Ordering::Relaxed);
        self.global_bytes.store(global_bytes, Ordering::Relaxed);
    }

    /// The default per-queue and the global in-memory bounds (bytes).
    pub fn limits(&self) -> (usize, usize) {
        (
            self.queue_bytes.load(Ordering::Relaxed),
            self.global_bytes.load(Ordering::Relaxed),
        )
    }

    /// In-memory bytes of ready messages over all queues.
    pub fn in_memory(&self) -> usize {
        self.in_memory.load(Ordering::Relaxed)
    }

    /// Where page files go: the given directory, or this budget's own in
    /// the system temp directory (made now if need be; the directories of
    /// dead processes are removed then).
    pub fn dir(&self) -> io::Result<&Path> {
        match &self.dir {
            PageDir::Given(dir) => Ok(dir),
            PageDir::Temp(cell) => {
                if let Some(dir) = cell.get() {
                    return Ok(dir);
                }
                let made = make_temp_dir()?;
                if let Err(made) = cell.set(made) {
                    // Another queue made one first.
                    let _ = std::fs::remove_dir(made);
                }
                cell.get()
                    .map(PathBuf::as_path)
                    .ok_or_else(|| io::Error::other("page directory missing"))
            }
        }
    }

    fn release(&self, bytes: usize) {
        let _ = self
            .in_memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }
}

impl Drop for PageBudget {
    fn drop(&mut self) {
        // Its queues, and with them their page files, are gone.
        if let PageDir::Temp(cell) = &self.dir {
            if let Some(dir) = cell.get() {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove page directory");
                }
            }
        }
    }
}

const TEMP_PREFIX: &str = "broker-pages-";

/// A new directory `broker-pages-<pid>-<n>` in the system temp directory,
/// after removing those of processes that no longer run.
fn make_temp_dir() -> io::Result<PathBuf> {
    let tmp = std::env::temp_dir();
    remove_stale(&tmp);
    let pid = std::process::id();
    let mut n = 0u64;
    loop {
        let dir = tmp.join(format!("{TEMP_PREFIX}{pid}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Another broker's of this process.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the page directories (`broker-pages-<pid>[-<n>]`) of processes
/// that no longer run.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                // Removed by another broker of this process meanwhile.
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove stale page directory");
                }
                _ => {}
            }
        }
    }
}

/// A queue's in-memory bounds from its arguments.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// `x-max-in-memory-length`: messages.
    pub count: Option<usize>,
    /// `x-max-in-memory-bytes`: bytes (bodies and per-message overhead).
    pub bytes: Option<usize>,
}

impl Limits {
    pub fn from_arguments(args: &FieldTable) -> Limits {
        let int = |key: &str| {
            crate::broker::arguments::get(args, key)
                .and_then(crate::broker::arguments::as_int)
                .filter(|v| *v >= 0)
                .map(|v| v.min(usize::MAX as i128) as usize)
        };
        Limits {
            count: int("x-max-in-memory-length"),
            bytes: int("x-max-in-memory-bytes"),
        }
    }
}

/// Tracks a queue's in-memory footprint and decides when to page.
#[derive(Debug)]
pub struct Budget {
    /// The broker's, shared by all its queues.
    shared: Arc<PageBudget>,
    limits: Limits,
    bytes: usize,
    count: usize,
}

impl Budget {
    pub fn new(shared: Arc<PageBudget>, limits: Limits) -> Self {
        Budget {
            shared,
            limits,
            bytes: 0,
            count: 0,
        }
    }

    /// The broker's budget this one counts against.
    pub fn shared(&self) -> &Arc<PageBudget> {
        &self.shared
    }

    /// What an in-memory message counts for.
    pub fn footprint(message: &QueuedMessage) -> usize {
        let m = &message.message;
        m.body.len()
            + m.raw_properties.len()
            + m.exchange.len()
            + m.routing_key.len()
            + MESSAGE_OVERHEAD
    }

    pub fn add(&mut self, footprint: usize) {
        self.bytes += footprint;
        self.count += 1;
        self.shared
            .in_memory
            .fetch_add(footprint, Ordering::Relaxed);
    }

    pub fn sub(&mut self, footprint: usize) {
        self.bytes = self.bytes.saturating_sub(footprint);
        self.count = self.count.saturating_sub(1);
        self.shared.release(footprint);
    }

    /// Whether a message of `footprint` should be paged rather than kept.
    pub fn should_page(&self, footprint: usize) -> bool {
        if self.limits.count.is_some_and(|max| self.count >= max) {
            return true;
        }
        let shared = &*self.shared;
        let max = self
            .limits
            .bytes
            .unwrap_or_else(|| shared.queue_bytes.load(Ordering::Relaxed));
        self.bytes + footprint > max
            || (self.bytes >= GLOBAL_MIN_QUEUE_BYTES
                && shared.in_memory.load(Ordering::Relaxed)
                    > shared.global_bytes.load(Ordering::Relaxed))
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.shared.release(self.bytes);
    }
}

/// A paged message: where its record is and what leaving counts for.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub seq: u64,
    /// Segment number (high 32 bits) and offset in it.
    pos: u64,
    len: u32,
    /// Body length; the top bit says the message has a store id.
    body: u32,
}

const STORED_BIT: u32 = 1 << 31;

impl Entry {
    pub fn body_len(&self) -> usize {
        (self.body & !STORED_BIT) as usize
    }

    pub fn has_store_id(&self) -> bool {
        self.body & STORED_BIT != 0
    }

    fn segment(&self) -> u32 {
        (self.pos >> 32) as u32
    }

    fn offset(&self) -> u64 {
        self.pos & 0xffff_ffff
    }
}

struct Segment {
    /// Shared with the page I/O thread.
    file: Arc<File>,
    path: PathBuf,
    /// Entries still pointing into it.
    live: u64,
}

/// Record: len u32, flags u8, store id u64, expiry u64 (nanoseconds after
/// the budget's base, plus one; 0 = none), delivery count u32, exchange (u16 + bytes),
/// routing key (u16 + bytes), properties (u32 + bytes), body (the rest).
const RECORD_HEADER: usize = 4 + 1 + 8 + 8 + 4;
const FLAG_REDELIVERED: u8 = 1;
const FLAG_STORED: u8 = 2;

/// A queue's page file: numbered segments, appended to, read by offset.
/// Its file I/O runs on the broker's page I/O thread (`page_io`); what
/// that has not written yet is read from memory.
pub struct PageFile {
    /// The broker's budget: the directory, the file number, the base of
    /// expiry times, the I/O thread.
    shared: Arc<PageBudget>,
    id: u64,
    segments: BTreeMap<u32, Segment>,
    /// The segment being written, its logical end (with `pending`) and how
    /// much of it was handed to the I/O thread (or written).
    write_segment: u32,
    write_end: u64,
    handed_off: u64,
    pending: Vec<u8>,
    /// Buffers handed to the I/O thread and not yet written (or whose
    /// write failed: kept for good), oldest first.
    in_flight: VecDeque<InFlight>,
    next_job: u64,
    progress: Arc<WriteProgress>,
    /// The next batch of paged messages, being read ahead.
    read_ahead: Option<Prefetch>,
    /// Batches that came from a read-ahead (tests and stats).
    prefetched: u64,
}

struct InFlight {
    segment: u32,
    offset: u64,
    data: Bytes,
    /// Its job number; `u64::MAX` for a write that failed in place.
    job: u64,
}

impl InFlight {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

struct Prefetch {
    /// Position (segment and offset) and length of the run read.
    pos: u64,
    len: u64,
    slot: Arc<ReadAhead>,
}

impl PageFile {
    pub fn new(shared: Arc<PageBudget>) -> Self {
        PageFile {
            id: shared.next_file.fetch_add(1, Ordering::Relaxed),
            shared,
            segments: BTreeMap::new(),
            write_segment: 0,
            write_end: 0,
            handed_off: 0,
            pending: Vec::new(),
            in_flight: VecDeque::new(),
            next_job: 0,
            progress: Arc::default(),
            read_ahead: None,
            prefetched: 0,
        }
    }

    /// Batches read back from a read-ahead rather than in place.
    pub fn prefetched(&self) -> u64 {
        self.prefetched
    }

    /// The files it has on disk.
    pub fn files(&self) -> Vec<PathBuf> {
        self.segments.values().map(|s| s.path.clone()).collect()
    }

    fn open_segment(&mut self, n: u32) -> io::Result<()> {
        if self.segments.contains_key(&n) {
            return Ok(());
        }
        let dir = self.shared.dir()?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}-{n}.page", self.id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        self.segments.insert(
            n,
            Segment {
                file: Arc::new(file),
                path,
                live: 0,
            },
        );
        Ok(())
    }

    /// Appends a message; returns its entry.
    pub fn write(&mut self, message: &QueuedMessage) -> io::Result<Entry> {
        let m = &message.message;
        let len = RECORD_HEADER
            + 2
            + m.exchange.len()
            + 2
            + m.routing_key.len()
            + 4
            + m.raw_properties.len()
            + m.body.len();
        if m.exchange.len() > u16::MAX as usize
            || m.routing_key.len() > u16::MAX as usize
            || len > (SEGMENT_BYTES as usize) * 4
        {
            return Err(io::Error::other("message too large to page"));
        }
        if self.write_end > 0 && self.write_end + len as u64 > SEGMENT_BYTES {
            self.flush()?;
            self.write_segment += 1;
            self.write_end = 0;
            self.handed_off = 0;
        }
        self.open_segment(self.write_segment)?;
        let mut flags = 0;
        if message.redelivered {
            flags |= FLAG_REDELIVERED;
        }
        if m.store_id.is_some() {
            flags |= FLAG_STORED;
        }
        let expiry = message.expires_at.map_or(0, |at| {
            (at.saturating_duration_since(self.shared.base).as_nanos() as u64).saturating_add(1)
        });
        let buf = &mut self.pending;
        buf.reserve(len);
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        buf.push(flags);
        buf.extend_from_slice(&m.store_id.unwrap_or(0).to_le_bytes());
        buf.extend_from_slice(&expiry.to_le_bytes());
        buf.extend_from_slice(&message.delivery_count.to_le_bytes());
        buf.extend_from_slice(&(m.exchange.len() as u16).to_le_bytes());
        buf.extend_from_slice(m.exchange.as_bytes());
        buf.extend_from_slice(&(m.routing_key.len() as u16).to_le_bytes());
        buf.extend_from_slice(m.routing_key.as_bytes());
        buf.extend_from_slice(&(m.raw_properties.len() as u32).to_le_bytes());
        buf.extend_from_slice(&m.raw_properties);
        buf.extend_from_slice(&m.body);
        let entry = Entry {
            seq: message.seq,
            pos: ((self.write_segment as u64) << 32) | self.write_end,
            len: len as u32,
            body: (m.body.len() as u32 & !STORED_BIT)
                | if m.store_id.is_some() { STORED_BIT } else { 0 },
        };
        self.write_end += len as u64;
        if let Some(segment) = self.segments.get_mut(&self.write_segment) {
            segment.live += 1;
        }
        if self.pending.len() >= WRITE_BUFFER {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "cannot write queue page file (kept in memory)");
            }
        }
        Ok(entry)
    }

    /// Hands the buffer to the I/O thread (or writes it here when there is
    /// none); it stays readable in memory until written, and for good if
    /// the write fails.
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = self
            .segments
            .get(&self.write_segment)
            .map(|s| s.file.clone())
            .ok_or_else(|| io::Error::other("page segment missing"))?;
        let data = Bytes::from(std::mem::take(&mut self.pending));
        let offset = self.handed_off;
        self.handed_off += data.len() as u64;
        self.next_job += 1;
        let job = self.next_job;
        let handed = self.shared.io().is_some_and(|io| {
            io.write(
                file.clone(),
                offset,
                data.clone(),
                job,
                self.progress.clone(),
            )
        });
        let job = match handed {
            true => job,
            false => match file.write_all_at(&data, offset) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot write queue page file (kept in memory)");
                    u64::MAX
                }
            },
        };
        self.in_flight.push_back(InFlight {
            segment: self.write_segment,
            offset,
            data,
            job,
        });
        self.wait_for_io();
        Ok(())
    }

    /// Forgets the buffers the I/O thread has written.
    fn prune(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let done = self.progress.done();
        let progress = &self.progress;
        self.in_flight
            .retain(|f| f.job != u64::MAX && (f.job > done || progress.failed(f.job)));
    }

    /// A disk slower than the queue: past `MAX_UNWRITTEN` handed-over bytes
    /// the queue waits (at most a few seconds) rather than grow without
    /// bound.
    fn wait_for_io(&mut self) {
        let started = Instant::now();
        loop {
            self.prune();
            let done = self.progress.done();
            let unwritten: usize = self
                .in_flight
                .iter()
                .filter(|f| f.job != u64::MAX && f.job > done)
                .map(|f| f.data.len())
                .sum();
            if unwritten <= MAX_UNWRITTEN || started.elapsed() > Duration::from_secs(5) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads `buf.len()` bytes at `offset` of segment `n`: from the write
    /// buffer, from buffers the I/O thread has not written yet, else from
    /// the file.
    fn read_exact(&self, n: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let segment = self
            .segments
            .get(&n)
            .ok_or_else(|| io::Error::other("page segment missing"))?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let out = &mut buf[(pos - offset) as usize..];
            if n == self.write_segment && pos >= self.handed_off {
                let from = (pos - self.handed_off) as usize;
                let source = self
                    .pending
                    .get(from..from + out.len())
                    .ok_or_else(|| io::Error::other("page record beyond the end"))?;
                out.copy_from_slice(source);
                return Ok(());
            }
            if let Some(f) = self
                .in_flight
                .iter()
                .rev()
                .find(|f| f.segment == n && f.offset <= pos && pos < f.end())
            {
                let take = (end.min(f.end()) - pos) as usize;
                let from = (pos - f.offset) as usize;
                out[..take].copy_from_slice(&f.data[from..from + take]);
                pos += take as u64;
                continue;
            }
            // On disk up to the next buffer still in memory.
            let mut limit = end;
            if n == self.write_segment {
                limit = limit.min(self.handed_off);
            }
            for f in self
                .in_flight
                .iter()
                .filter(|f| f.segment == n && f.offset > pos)
            {
                limit = limit.min(f.offset);
            }
            let take = (limit - pos) as usize;
            segment.file.read_exact_at(&mut out[..take], pos)?;
            pos = limit;
        }
        Ok(())
    }

    /// Starts reading the batch that `entries` (the paged messages, front
    /// first) will next give to the head, on the I/O thread.
    pub fn read_ahead<'a>(&mut self, entries: impl Iterator<Item = &'a Entry> + Clone) {
        let n = Self::batch_len(entries.clone());
        let mut batch = entries.take(n);
        let Some(first) = batch.next().copied() else {
            return;
        };
        let mut len = first.len as u64;
        for e in batch {
            if e.pos != first.pos + len {
                return; // not one run: read in place when due
            }
            len += e.len as u64;
        }
        if self.read_ahead.as_ref().is_some_and(|p| p.pos == first.pos) {
            return;
        }
        let (n, offset) = (first.segment(), first.offset());
        // Not yet handed over: nothing to gain.
        if n == self.write_segment && offset + len > self.handed_off {
            return;
        }
        let Some(file) = self.segments.get(&n).map(|s| s.file.clone()) else {
            return;
        };
        self.read_ahead = self
            .shared
            .io()
            .and_then(|io| io.read(file, offset, len as usize))
            .map(|slot| Prefetch {
                pos: first.pos,
                len,
                slot,
            });
    }

    /// The bytes of `entries` if a finished read-ahead holds exactly them.
    fn take_read_ahead(&mut self, entries: &[Entry]) -> Option<Bytes> {
        let first = entries.first()?;
        let total: u64 = entries.iter().map(|e| e.len as u64).sum();
        let p = self.read_ahead.take()?;
        if p.pos != first.pos || p.len != total {
            return None;
        }
        // An error: read in place, which logs it.
        p.slot.wait()?.ok()
    }

    /// How many of `entries` (from the front) one read-ahead takes.
    pub fn batch_len<'a>(entries: impl Iterator<Item = &'a Entry>) -> usize {
        let mut count = 0;
        let mut bytes = 0u64;
        for e in entries.take(READ_BATCH) {
            if count > 0 && bytes + e.len as u64 > READ_BATCH_BYTES {
                break;
            }
            bytes += e.len as u64;
            count += 1;
        }
        count
    }

    /// Reads `entries` back and releases them; an entry that cannot be
    /// read is logged and comes back as `None`.
    pub fn read(&mut self, entries: &[Entry]) -> Vec<Option<QueuedMessage>> {
        self.prune();
        let mut out = Vec::with_capacity(entries.len());
        if let Some(buf) = self.take_read_ahead(entries) {
            self.prefetched += 1;
            let mut at = 0usize;
            for e in entries {
                let record = buf.slice(at..at + e.len as usize);
                at += e.len as usize;
                out.push(self.decode_logged(e.seq, &record));
            }
            for e in entries {
                self.release(e);
            }
            return out;
        }
        let mut start = 0;
        while start < entries.len() {
            // A run of records that lie one after the other.
            let mut end = start + 1;
            while end < entries.len()
                && entries[end].pos == entries[end - 1].pos + entries[end - 1].len as u64
            {
                end += 1;
            }
            let run = &entries[start..end];
            // One buffer per run; the messages' properties and bodies are
            // slices of it (no copy per message), so it lives as long as
            // the last of them.
            match self.read_run(run) {
                Ok(buf) => {
                    let mut at = 0usize;
                    for e in run {
                        let record = buf.slice(at..at + e.len as usize);
                        at += e.len as usize;
                        out.push(self.decode_logged(e.seq, &record));
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, messages = run.len(), "cannot read queue page file: messages dropped");
                    out.extend(run.iter().map(|_| None));
                }
            }
            start = end;
        }
        for e in entries {
            self.release(e);
        }
        out
    }

    fn decode_logged(&self, seq: u64, record: &Bytes) -> Option<QueuedMessage> {
        let decoded = decode(seq, record, self.shared.base);
        if decoded.is_none() {
            tracing::error!(seq, "corrupt record in queue page file: message dropped");
        }
        decoded
    }

    fn read_run(&self, run: &[Entry]) -> io::Result<Bytes> {
        let first = run[0];
        let total: u64 = run.iter().map(|e| e.len as u64).sum();
        let mut buf = vec![0u8; total as usize];
        self.read_exact(first.segment(), first.offset(), &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// A copy of a paged message, read without releasing its entry
    /// (management's browse); `None` if it cannot be read.
    pub fn peek(&self, entry: &Entry) -> Option<QueuedMessage> {
        let mut buf = vec![0u8; entry.len as usize];
        match self.read_exact(entry.segment(), entry.offset(), &mut buf) {
            Ok(()) => decode(entry.seq, &Bytes::from(buf), self.shared.base),
            Err(e) => {
                tracing::error!(error = %e, "cannot read queue page file");
                None
            }
        }
    }

    /// The store id of a paged message, read from its record.
    pub fn store_id(&self, entry: &Entry) -> Option<u64> {
        let mut header = [0u8; RECORD_HEADER];
        match self.read_exact(entry.segment(), entry.offset(), &mut header) {
            Ok(()) => Some(u64::from_le_bytes(header[5..13].try_into().ok()?)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read queue page file");
                None
            }
        }
    }

    /// The entry's message left the page file.
    pub fn release(&mut self, entry: &Entry) {
        let n = entry.segment();
        let Some(segment) = self.segments.get_mut(&n) else {
            return;
        };
        segment.live = segment.live.saturating_sub(1);
        if segment.live > 0 {
            return;
        }
        // Its buffers in memory are not needed any more; the I/O thread
        // truncates or deletes it after the writes handed to it before.
        self.in_flight.retain(|f| f.segment != n);
        if self
            .read_ahead
            .as_ref()
            .is_some_and(|p| (p.pos >> 32) as u32 == n)
        {
            self.read_ahead = None;
        }
        if n == self.write_segment {
            // Empty again: start over at its beginning.
            self.pending.clear();
            self.write_end = 0;
            self.handed_off = 0;
            let file = segment.file.clone();
            match self.shared.io() {
                Some(io) => io.truncate(file),
                None => {
                    if let Err(e) = file.set_len(0) {
                        tracing::warn!(error = %e, "cannot truncate queue page file");
                    }
                }
            }
        } else if let Some(segment) = self.segments.remove(&n) {
            self.remove_file(segment.path);
        }
    }

    fn remove_file(&self, path: PathBuf) {
        match self.shared.io() {
            Some(io) => io.remove(path),
            None => remove(&path),
        }
    }

    /// Deletes every segment. Numbering goes on (a file name is never
    /// used twice: a deletion still queued must not hit a new file).
    pub fn clear(&mut self) {
        for (_, segment) in std::mem::take(&mut self.segments) {
            self.remove_file(segment.path);
        }
        self.pending.clear();
        self.in_flight.clear();
        self.read_ahead = None;
        self.write_segment += 1;
        self.write_end = 0;
        self.handed_off = 0;
    }
}

impl Drop for PageFile {
    fn drop(&mut self) {
        self.clear();
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove queue page file");
    }
}

/// A message from its page record; its properties and body are slices of
/// `record`'s buffer. Expiry times count from `base`.
fn decode(seq: u64, record: &Bytes, base: Instant) -> Option<QueuedMessage> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let end = at.checked_add(n)?;
        let out = record.get(*at..end)?;
        *at = end;
        Some(out)
    };
    let header = take(&mut at, RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    if len != record.len() {
        return None;
    }
    let flags = header[4];
    let store_id = u64::from_le_bytes(header[5..13].try_into().ok()?);
    let expiry = u64::from_le_bytes(header[13..21].try_into().ok()?);
    let delivery_count = u32::from_le_bytes(header[21..25].try_into().ok()?);
    let n = take(&mut at, 2)?;
    let exchange = take(&mut at, u16::from_le_bytes([n[0], n[1]]) as usize)?;
    let n = take(&mut at, 2)?;
    let routing_key = take(&mut at, u16::from_le_bytes([n[0], n[1]]) as usize)?;
    let n = take(&mut at, 4)?;
    let properties_len = u32::from_le_bytes(n.try_into().ok()?) as usize;
    let properties_at = at;
    let raw_properties = take(&mut at, properties_len)?;
    if at > record.len() {
        return None;
    }
    let body = record.slice(at..);
    let (_, properties) = amq_protocol::protocol::basic::parse_properties(raw_properties).ok()?;
    let mut message = Message::new(
        std::str::from_utf8(exchange).ok()?.to_string(),
        std::str::from_utf8(routing_key).ok()?.to_string(),
        properties,
        record.slice(properties_at..properties_at + properties_len),
        body,
    );
    if flags & FLAG_STORED != 0 {
        message.store_id = Some(store_id);
    }
    let expires_at = match expiry {
        0 => None,
        nanos => Some(base + Duration::from_nanos(nanos - 1)),
    };
    Some(QueuedMessage {
        seq,
        message: Arc::new(message),
        redelivered: flags & FLAG_REDELIVERED != 0,
        expires_at,
        delivery_count,
    })
}

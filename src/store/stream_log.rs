//! A stream queue's log: messages appended in chunks, never removed by
//! consumers, read back by offset. Retention drops whole old segments.
//!
//! Chunks are written by the message log's writer thread (so a publisher
//! confirm waits for one sync sequence whatever the queue type): all the
//! entries for this stream that arrived during one group commit form one
//! chunk (RabbitMQ's "last" offset spec starts at the last chunk). Segment
//! files are named by the first offset they hold, so an empty newest
//! segment still tells where offsets continue after a restart.
//!
//! On disk a chunk is one framed record (`len | crc32c | payload`):
//! `kind u8 | first u64 | count u32 | timestamp_ms i64 | bloom 2×u64 |
//! flags u8 | count × blob(entry)`, an entry being `filter str | exchange
//! str | routing_key str | properties blob | body blob`. The properties
//! already carry the `x-stream-offset` header, so reads deliver them as is.

use super::record::{self, Reader};
use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const CHUNK: u8 = 0x53;
const HAS_FILTERED: u8 = 1;
const HAS_UNFILTERED: u8 = 2;
/// RabbitMQ's default `x-stream-max-segment-size-bytes`.
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// Limits on what a stream keeps; checked when a segment fills up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    pub max_segment_bytes: u64,
}

/// What the log stores of a message (the broker's `Message` provides it,
/// so an append shares the published message instead of copying its parts).
pub trait EntrySource: Send + Sync {
    fn exchange(&self) -> &str;
    fn routing_key(&self) -> &str;
    fn raw_properties(&self) -> &[u8];
    fn body(&self) -> &[u8];
}

/// A message waiting for the writer; its offset is given at commit.
pub struct StreamEntry {
    pub filter_value: Option<String>,
    pub message: Arc<dyn EntrySource>,
    /// A persistent message (delivery mode 2): its chunk is fsynced before
    /// it counts as committed. Transient ones are only written, as
    /// RabbitMQ's streams write every message.
    pub persistent: bool,
}

/// A message read back.
pub struct StoredMessage {
    pub offset: u64,
    pub filter_value: Option<Bytes>,
    pub exchange: String,
    pub routing_key: String,
    pub raw_properties: Bytes,
    pub body: Bytes,
}

/// A 128-bit Bloom filter over a chunk's filter values (two probes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bloom(pub [u64; 2]);

impl Bloom {
    fn probes(value: &[u8]) -> [u32; 2] {
        let h = crc32c::crc32c(value);
        let h2 = crc32c::crc32c_append(0x9e37_79b9, value);
        [h % 128, h2 % 128]
    }

    pub fn insert(&mut self, value: &[u8]) {
        for bit in Self::probes(value) {
            self.0[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    pub fn may_contain(&self, value: &[u8]) -> bool {
        Self::probes(value)
            .iter()
            .all(|bit| self.0[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

/// Where a chunk is and what it may hold.
#[derive(Clone, Debug)]
pub struct ChunkInfo {
    pub first: u64,
    pub count: u32,
    pub timestamp_ms: i64,
    pub bloom: Bloom,
    pub has_filtered: bool,
    pub has_unfiltered: bool,
    segment: u64,
    pos: u64,
    len: u32,
}

impl ChunkInfo {
    pub fn end(&self) -> u64 {
        self.first + self.count as u64
    }
}

#[derive(Default)]
struct SegmentInfo {
    bytes: u64,
    newest_ms: i64,
}

#[derive(Default)]
struct Index {
    chunks: VecDeque<ChunkInfo>,
    /// First offset -> size and newest timestamp.
    segments: BTreeMap<u64, SegmentInfo>,
    /// The offset the next message gets.
    next: u64,
}

struct Tail {
    segment: u64,
    file: File,
    size: u64,
}

pub struct StreamLog {
    dir: PathBuf,
    retention: Retention,
    index: RwLock<Index>,
    /// Used by the writer thread only.
    tail: Mutex<Tail>,
    /// Read handles by segment.
    files: Mutex<HashMap<u64, Arc<File>>>,
    committed: watch::Sender<u64>,
    deleted: AtomicBool,
    /// Chunks read from disk, so tests can see that filtering skips chunks.
    pub chunks_read: AtomicU64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl StreamLog {
    /// Opens (or creates) the stream in `dir`, reading back its chunks and
    /// truncating a torn tail.
    pub fn open(dir: &Path, retention: Retention) -> anyhow::Result<StreamLog> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let mut index = Index::default();
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let data = Bytes::from(
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
            );
            index.next = index.next.max(first);
            let mut pos = 0;
            let mut info = SegmentInfo::default();
            while let Some((payload, next)) = record::read(&data, pos) {
                match parse_header(&payload) {
                    Some((chunk_first, count, timestamp_ms, bloom, flags)) => {
                        index.chunks.push_back(ChunkInfo {
                            first: chunk_first,
                            count,
                            timestamp_ms,
                            bloom,
                            has_filtered: flags & HAS_FILTERED != 0,
                            has_unfiltered: flags & HAS_UNFILTERED != 0,
                            segment: first,
                            pos: pos as u64,
                            len: (next - pos) as u32,
                        });
                        index.next = chunk_first + count as u64;
                        info.newest_ms = timestamp_ms;
                    }
                    None => tracing::warn!(segment = first, "skipping an unreadable stream chunk"),
                }
                pos = next;
            }
            if pos < data.len() {
                if i + 1 == firsts.len() {
                    tracing::warn!(
                        stream = %dir.display(),
                        dropped = data.len() - pos,
                        "truncating torn tail of the stream"
                    );
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(pos as u64)?;
                    file.sync_all()?;
                } else {
                    tracing::error!(
                        segment = first,
                        "corrupt chunk inside an older stream segment; the rest of it is skipped"
                    );
                }
            }
            info.bytes = pos as u64;
            index.segments.insert(first, info);
        }
        let tail_first = match firsts.last() {
            Some(&f) => f,
            None => {
                index.segments.insert(0, SegmentInfo::default());
                0
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, tail_first))
            .context("cannot open the stream's tail segment")?;
        let size = file.metadata()?.len();
        let (committed, _) = watch::channel(index.next);
        let log = StreamLog {
            dir: dir.to_path_buf(),
            retention,
            index: RwLock::new(index),
            tail: Mutex::new(Tail {
                segment: tail_first,
                file,
                size,
            }),
            files: Mutex::new(HashMap::new()),
            committed,
            deleted: AtomicBool::new(false),
            chunks_read: AtomicU64::new(0),
        };
        log.apply_retention();
        Ok(log)
    }

    /// A receiver of the offset after the last committed message.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// (first retained offset, next offset).
    pub fn bounds(&self) -> (u64, u64) {
        let index = self.index.read();
        let first = index.chunks.front().map_or(index.next, |c| c.first);
        (first, index.next)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.index.read().segments.values().map(|s| s.bytes).sum()
    }

    pub fn chunk_count(&self) -> usize {
        self.index.read().chunks.len()
    }

    pub fn segment_count(&self) -> usize {
        self.index.read().segments.len()
    }

    /// The first offset of the last chunk ("last"), or the next offset when
    /// the stream is empty.
    pub fn last_chunk_start(&self) -> u64 {
        let index = self.index.read();
        index.chunks.back().map_or(index.next, |c| c.first)
    }

    /// The first offset of the first chunk written at or after `ms`.
    pub fn offset_at_time(&self, ms: i64) -> u64 {
        let index = self.index.read();
        let i = index.chunks.partition_point(|c| c.timestamp_ms < ms);
        index.chunks.get(i).map_or(index.next, |c| c.first)
    }

    /// The chunk holding `offset`, or the first one after it (when
    /// retention removed it). `None`: nothing committed at or after it.
    pub fn chunk_from(&self, offset: u64) -> Option<ChunkInfo> {
        let index = self.index.read();
        let i = index.chunks.partition_point(|c| c.end() <= offset);
        index.chunks.get(i).cloned()
    }

    /// The chunk holding `offset` (or the first after it) and the ones
    /// right after it in the same segment, up to `max_bytes` in all (at
    /// least one chunk): what one read can take when chunks are small.
    pub fn chunks_from(&self, offset: u64, max_bytes: u64) -> Vec<ChunkInfo> {
        let index = self.index.read();
        let i = index.chunks.partition_point(|c| c.end() <= offset);
        let mut out: Vec<ChunkInfo> = Vec::new();
        let mut bytes = 0u64;
        for c in index.chunks.range(i..) {
            if let Some(last) = out.last() {
                let adjacent = c.segment == last.segment && c.pos == last.pos + last.len as u64;
                if !adjacent || bytes + c.len as u64 > max_bytes {
                    break;
                }
            }
            bytes += c.len as u64;
            out.push(c.clone());
        }
        out
    }

    /// Whether `chunk` is in the segment being written (fresh, likely
    /// still in the page cache).
    pub fn in_tail_segment(&self, chunk: &ChunkInfo) -> bool {
        self.index.read().segments.keys().next_back() == Some(&chunk.segment)
    }

    /// Reads the messages of `chunks` (adjacent in one segment, as
    /// `chunks_from` gives them) with one read, keeping the chunks that
    /// `keep` accepts.
    pub fn read_many(
        &self,
        chunks: &[ChunkInfo],
        keep: impl Fn(&ChunkInfo) -> bool,
    ) -> std::io::Result<Vec<StoredMessage>> {
        let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
            return Ok(Vec::new());
        };
        let file = self.read_handle(first.segment)?;
        let total = (last.pos + last.len as u64 - first.pos) as usize;
        let mut buf = vec![0u8; total];
        file.read_exact_at(&mut buf, first.pos)?;
        let data = Bytes::from(buf);
        let corrupt =
            || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt stream chunk");
        // Sized once: growing it chunk by chunk copied the whole list each
        // time it doubled.
        let count = chunks
            .iter()
            .filter(|c| keep(c))
            .map(|c| c.count as usize)
            .sum();
        let mut out = Vec::with_capacity(count);
        for chunk in chunks {
            if !keep(chunk) {
                continue;
            }
            // Counts the chunks decoded (what a filter lets through).
            self.chunks_read.fetch_add(1, Ordering::Relaxed);
            let at = (chunk.pos - first.pos) as usize;
            let (payload, _) = record::read(&data, at).ok_or_else(corrupt)?;
            parse_chunk(payload, &mut out).ok_or_else(corrupt)?;
        }
        Ok(out)
    }

    /// Reads a chunk's messages.
    pub fn read(&self, chunk: &ChunkInfo) -> std::io::Result<Vec<StoredMessage>> {
        self.read_many(std::slice::from_ref(chunk), |_| true)
    }

    fn read_handle(&self, segment: u64) -> std::io::Result<Arc<File>> {
        let mut files = self.files.lock();
        if let Some(f) = files.get(&segment) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment_path(&self.dir, segment))?);
        files.insert(segment, f.clone());
        Ok(f)
    }

    /// Writes `entries` as one chunk, synced if any of them is persistent
    /// (writer thread only).
    /// Writes `entries` as one chunk (synced if one is persistent). On an
    /// error nothing of it counts (the file is cut back to its last chunk)
    /// and the caller may try again with the same entries.
    pub fn commit(&self, entries: &[StreamEntry]) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let first = self.index.read().next;
        let timestamp_ms = now_ms();
        let mut bloom = Bloom::default();
        let mut flags = 0;
        let size: usize = entries
            .iter()
            .map(|e| {
                let m = &e.message;
                64 + m.raw_properties().len() + m.body().len() + m.routing_key().len()
            })
            .sum();
        // One pass into the framed record: the frame header and each
        // entry's length are filled in once known.
        let mut framed = BytesMut::with_capacity(record::HEADER + 48 + size);
        framed.put_bytes(0, record::HEADER);
        framed.put_u8(CHUNK);
        framed.put_u64(first);
        framed.put_u32(entries.len() as u32);
        framed.put_i64(timestamp_ms);
        let bloom_at = framed.len();
        framed.put_u64(0);
        framed.put_u64(0);
        framed.put_u8(0);
        // The offset header is the same for every message but its value:
        // encoded once, the value patched per message.
        let mut offset_field = BytesMut::with_capacity(32);
        long_header_field(&mut offset_field, "x-stream-offset", 0);
        let value_at = offset_field.len() - 8;
        for (i, e) in entries.iter().enumerate() {
            let entry_at = framed.len();
            framed.put_u32(0);
            match e.filter_value.as_deref().filter(|v| !v.is_empty()) {
                Some(v) => {
                    bloom.insert(v.as_bytes());
                    flags |= HAS_FILTERED;
                    record::put_str(&mut framed, v);
                }
                None => {
                    flags |= HAS_UNFILTERED;
                    framed.put_u8(0);
                }
            }
            let m = &e.message;
            record::put_str(&mut framed, m.exchange());
            record::put_str(&mut framed, m.routing_key());
            offset_field[value_at..].copy_from_slice(&(first + i as u64).to_be_bytes());
            let props_at = framed.len();
            framed.put_u32(0);
            put_with_header_fields(&mut framed, m.raw_properties(), &offset_field);
            patch_len(&mut framed, props_at);
            record::put_blob(&mut framed, m.body());
            patch_len(&mut framed, entry_at);
        }
        framed[bloom_at..bloom_at + 8].copy_from_slice(&bloom.0[0].to_be_bytes());
        framed[bloom_at + 8..bloom_at + 16].copy_from_slice(&bloom.0[1].to_be_bytes());
        framed[bloom_at + 16] = flags;
        let payload_len = (framed.len() - record::HEADER) as u32;
        let crc = crc32c::crc32c(&framed[record::HEADER..]);
        framed[..4].copy_from_slice(&payload_len.to_be_bytes());
        framed[4..8].copy_from_slice(&crc.to_be_bytes());

        let mut tail = self.tail.lock();
        let written = tail.file.write_all(&framed).and_then(|()| {
            if entries.iter().any(|e| e.persistent) {
                tail.file.sync_data()?;
            }
            Ok(())
        });
        if let Err(e) = written {
            // A part of the chunk may be there (disk full): cut it off, so
            // that the next try appends right after the last good chunk.
            let end = tail.size;
            if let Err(cut) = tail.file.set_len(end) {
                tracing::error!(stream = %self.dir.display(), "cannot cut a failed stream write back: {cut}");
            }
            return Err(e);
        }
        let chunk = ChunkInfo {
            first,
            count: entries.len() as u32,
            timestamp_ms,
            bloom,
            has_filtered: flags & HAS_FILTERED != 0,
            has_unfiltered: flags & HAS_UNFILTERED != 0,
            segment: tail.segment,
            pos: tail.size,
            len: framed.len() as u32,
        };
        tail.size += framed.len() as u64;
        let next = chunk.end();
        {
            let mut index = self.index.write();
            let segment = index.segments.entry(tail.segment).or_default();
            segment.bytes = tail.size;
            segment.newest_ms = timestamp_ms;
            index.chunks.push_back(chunk);
            index.next = next;
        }
        self.committed.send_replace(next);
        if tail.size >= self.retention.max_segment_bytes.max(1) {
            // The chunk is stored: a new segment that cannot be opened is
            // tried again after the next chunk.
            let path = segment_path(&self.dir, next);
            let file = match OpenOptions::new().create(true).append(true).open(path) {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!(stream = %self.dir.display(), "cannot start a new stream segment: {e}");
                    return Ok(());
                }
            };
            tail.file = file;
            tail.segment = next;
            tail.size = 0;
            self.index
                .write()
                .segments
                .insert(next, SegmentInfo::default());
            drop(tail);
            self.apply_retention();
        }
        Ok(())
    }

    /// Deletes the oldest segments (never the one being written) while the
    /// stream is over its size or age limit.
    fn apply_retention(&self) {
        let now = now_ms();
        let mut removed = Vec::new();
        {
            let mut index = self.index.write();
            loop {
                if index.segments.len() <= 1 {
                    break;
                }
                let total: u64 = index.segments.values().map(|s| s.bytes).sum();
                let Some((&oldest, info)) = index.segments.iter().next() else {
                    break;
                };
                let too_big = self.retention.max_bytes.is_some_and(|max| total > max);
                let too_old = self
                    .retention
                    .max_age
                    .is_some_and(|age| info.newest_ms < now - age.as_millis() as i64);
                if !(too_big || too_old) {
                    break;
                }
                index.segments.remove(&oldest);
                let next_first = index.segments.keys().next().copied().unwrap_or(u64::MAX);
                while index.chunks.front().is_some_and(|c| c.first < next_first) {
                    index.chunks.pop_front();
                }
                removed.push(oldest);
            }
        }
        for first in removed {
            self.files.lock().remove(&first);
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, first)) {
                tracing::warn!(segment = first, "cannot delete a stream segment: {e}");
            } else {
                tracing::debug!(stream = %self.dir.display(), segment = first, "retention removed a segment");
            }
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The stream queue was deleted: its files go. The folder is renamed
    /// out of the way at once (a stream of the same name may be declared
    /// right after) and deleted on a thread of its own: a stream of many
    /// gigabytes takes a while, which no async worker may spend. A folder
    /// left by a crash meanwhile is deleted at the next start
    /// (`remove_deleted_streams`).
    pub fn destroy(&self) {
        self.deleted.store(true, Ordering::Release);
        self.files.lock().clear();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let doomed = self.dir.with_file_name(format!(
            "{DELETED_PREFIX}{}-{}-{}",
            std::process::id(),
            now_ms(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::rename(&self.dir, &doomed) {
            Ok(()) => remove_in_background(doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not renamed: deleted here, before a stream of the same name
            // can be made in it.
            Err(_) => {
                if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                    tracing::warn!(stream = %self.dir.display(), "cannot delete the stream's files: {e}");
                }
            }
        }
    }
}

/// The folder of a deleted stream is renamed to this and a unique number
/// until it is gone (stream folders are hex or `sha256-…`).
const DELETED_PREFIX: &str = "deleted-";

fn remove_in_background(dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("stream-delete".into())
        .spawn({
            let dir = dir.clone();
            move || {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(stream = %dir.display(), "cannot delete the stream's files: {e}");
                }
            }
        });
    if spawned.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Deletes the folders of deleted streams that a stop or crash left in
/// `streams` (in the background).
pub fn remove_deleted_streams(streams: &Path) {
    let Ok(entries) = std::fs::read_dir(streams) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(DELETED_PREFIX)
        {
            remove_in_background(entry.path());
        }
    }
}

impl StreamLog {}

type Header = (u64, u32, i64, Bloom, u8);

fn parse_header(payload: &Bytes) -> Option<Header> {
    let mut p = &payload[..];
    if p.remaining() < 1 + 8 + 4 + 8 + 16 + 1 || p.get_u8() != CHUNK {
        return None;
    }
    let first = p.get_u64();
    let count = p.get_u32();
    let timestamp = p.get_i64();
    let bloom = Bloom([p.get_u64(), p.get_u64()]);
    let flags = p.get_u8();
    Some((first, count, timestamp, bloom, flags))
}

/// Appends a chunk's messages to `out` (`None`, with `out` partly filled,
/// for a corrupt chunk).
fn parse_chunk(payload: Bytes, out: &mut Vec<StoredMessage>) -> Option<()> {
    let (first, count, ..) = parse_header(&payload)?;
    let mut r = Reader(payload.slice(1 + 8 + 4 + 8 + 16 + 1..));
    for i in 0..count as u64 {
        let mut e = Reader(r.blob()?);
        let filter_len = e.u8()? as usize;
        if e.0.remaining() < filter_len {
            return None;
        }
        let filter = e.0.split_to(filter_len);
        out.push(StoredMessage {
            offset: first + i,
            filter_value: (!filter.is_empty()).then_some(filter),
            exchange: e.str()?,
            routing_key: e.str()?,
            raw_properties: e.blob()?,
            body: e.blob()?,
        });
    }
    Some(())
}

/// One encoded header table entry: `key` with a long (`l`) value.
pub fn long_header_field(out: &mut BytesMut, key: &str, value: i64) {
    record::put_str(out, key);
    out.put_u8(b'l');
    out.put_i64(value);
}

/// Writes the length of what follows the `u32` placeholder at `at`.
fn patch_len(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// `raw` (encoded basic properties: flags, then fields in order) with the
/// encoded header table entries `field` appended to its headers, spliced in
/// without decoding.
pub fn with_header_fields(raw: &[u8], field: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len() + field.len() + 4);
    put_with_header_fields(&mut out, raw, field);
    out.freeze()
}

/// Appends `raw` with `field` spliced into its headers to `out` (`raw`
/// unchanged when it cannot be parsed that far).
fn put_with_header_fields(out: &mut BytesMut, raw: &[u8], field: &[u8]) {
    let start = out.len();
    if field.is_empty() || splice_header_fields(out, raw, field).is_none() {
        out.truncate(start);
        out.put_slice(raw);
    }
}

fn splice_header_fields(out: &mut BytesMut, raw: &[u8], field: &[u8]) -> Option<()> {
    if raw.len() < 2 {
        return None;
    }
    let flags = u16::from_be_bytes([raw[0], raw[1]]);
    if flags & 1 != 0 {
        return None; // a continuation flag word: not sent by 0-9-1 clients
    }
    let mut pos = 2;
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            pos += 1 + *raw.get(pos)? as usize;
        }
    }
    if flags & (1 << 13) != 0 {
        let len_bytes = raw.get(pos..pos + 4)?;
        let len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let end = pos + 4 + len;
        if end > raw.len() {
            return None;
        }
        out.put_slice(&raw[..pos]);
        out.put_u32((len + field.len()) as u32);
        out.put_slice(&raw[pos + 4..end]);
        out.put_slice(field);
        out.put_slice(&raw[end..]);
    } else {
        if pos > raw.len() {
            return None;
        }
        out.put_u16(flags | (1 << 13));
        out.put_slice(&raw[2..pos]);
        out.put_u32(field.len() as u32);
        out.put_slice(field);
        out.put_slice(&raw[pos..]);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode, AMQPValue, BasicProperties, FieldTable, ShortString};

    #[test]
    fn folders_of_deleted_streams_left_by_a_stop_are_removed() {
        let streams = tempfile::tempdir().unwrap();
        let doomed = streams.path().join(format!("{DELETED_PREFIX}1-2-3"));
        let live = streams.path().join("2f0073");
        for dir in [&doomed, &live] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("00000000000000000000.seg"), b"x").unwrap();
        }
        remove_deleted_streams(streams.path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while doomed.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!doomed.exists());
        assert!(live.join("00000000000000000000.seg").exists());
    }

    /// A message published to the default exchange with routing key "s"
    /// and no properties.
    struct Body(Vec<u8>);

    impl EntrySource for Body {
        fn exchange(&self) -> &str {
            ""
        }
        fn routing_key(&self) -> &str {
            "s"
        }
        fn raw_properties(&self) -> &[u8] {
            &[0, 0]
        }
        fn body(&self) -> &[u8] {
            &self.0
        }
    }

    fn entry(body: &str, filter: Option<&str>) -> StreamEntry {
        StreamEntry {
            filter_value: filter.map(str::to_string),
            message: Arc::new(Body(body.as_bytes().to_vec())),
            persistent: true,
        }
    }

    /// `raw` with an `x-stream-offset` long header added.
    fn with_offset_header(raw: &[u8], offset: u64) -> Bytes {
        let mut field = BytesMut::with_capacity(32);
        long_header_field(&mut field, "x-stream-offset", offset as i64);
        with_header_fields(raw, &field)
    }

    fn offset_header(raw: &Bytes) -> Option<AMQPValue> {
        let (_, props) = amq_protocol::protocol::basic::parse_properties(&raw[..]).ok()?;
        props
            .headers()
            .as_ref()?
            .inner()
            .get("x-stream-offset")
            .cloned()
    }

    #[test]
    fn offset_header_is_spliced_into_any_properties() {
        let none = with_offset_header(&[0, 0], 7);
        assert_eq!(offset_header(&none), Some(AMQPValue::LongLongInt(7)));
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("a"), AMQPValue::LongString("b".into()));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers)
            .with_priority(3);
        let spliced = with_offset_header(&encode::properties(&props), 42);
        let (_, back) = amq_protocol::protocol::basic::parse_properties(&spliced[..]).unwrap();
        assert_eq!(back.content_type().as_ref().unwrap().as_str(), "text/plain");
        assert_eq!(*back.priority(), Some(3));
        let h = back.headers().as_ref().unwrap().inner();
        assert_eq!(h.get("a"), Some(&AMQPValue::LongString("b".into())));
        assert_eq!(h.get("x-stream-offset"), Some(&AMQPValue::LongLongInt(42)));
        let props = BasicProperties::default().with_content_type("x".into());
        let spliced = with_offset_header(&encode::properties(&props), 1);
        assert_eq!(offset_header(&spliced), Some(AMQPValue::LongLongInt(1)));
    }

    #[test]
    fn chunks_survive_reopen_and_retention_drops_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_bytes: Some(600),
            max_age: None,
            max_segment_bytes: 200,
        };
        {
            let log = StreamLog::open(dir.path(), retention).unwrap();
            for i in 0..10 {
                log.commit(&[entry(&format!("m{i}-a"), None), entry("b", Some("red"))])
                    .unwrap();
            }
            assert_eq!(log.bounds().1, 20);
            assert!(log.bounds().0 > 0, "retention dropped old segments");
            assert!(log.bytes() <= 600 + 200);
        }
        let log = StreamLog::open(dir.path(), retention).unwrap();
        let (first, next) = log.bounds();
        assert_eq!(next, 20);
        let chunk = log.chunk_from(first).unwrap();
        let messages = log.read(&chunk).unwrap();
        assert_eq!(messages[0].offset, first);
        assert_eq!(
            offset_header(&messages[0].raw_properties),
            Some(AMQPValue::LongLongInt(first as i64))
        );
        assert_eq!(messages[1].filter_value.as_deref(), Some(&b"red"[..]));
        assert!(chunk.bloom.may_contain(b"red"));
        assert!(chunk.has_unfiltered && chunk.has_filtered);
        log.commit(&[entry("after", None)]).unwrap();
        assert_eq!(log.bounds().1, 21);
    }

    #[test]
    fn a_torn_chunk_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_segment_bytes: DEFAULT_SEGMENT_BYTES,
            ..Retention::default()
        };
        {
            let log = StreamLog::open(dir.path(), retention).unwrap();
            log.commit(&[entry("kept", None)]).unwrap();
            log.commit(&[entry("torn", None)]).unwrap();
        }
        let seg = segment_path(dir.path(), 0);
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let log = StreamLog::open(dir.path(), retention).unwrap();
        assert_eq!(log.bounds(), (0, 1));
        log.commit(&[entry("new", None)]).unwrap();
        let chunk = log.chunk_from(1).unwrap();
        assert_eq!(&log.read(&chunk).unwrap()[0].body[..], b"new");
    }

    /// Small adjacent chunks are taken together, up to the byte bound, and
    /// read with one read; chunks the predicate refuses are not decoded.
    #[test]
    fn adjacent_chunks_are_read_together() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_segment_bytes: 1 << 20,
            ..Retention::default()
        };
        let log = StreamLog::open(dir.path(), retention).unwrap();
        for i in 0..10 {
            log.commit(&[entry(&format!("m{i}"), None), entry("x", Some("red"))])
                .unwrap();
        }
        let all = log.chunks_from(0, u64::MAX);
        assert_eq!(all.len(), 10);
        let one_len = all[0].len as u64;
        assert_eq!(log.chunks_from(5, 3 * one_len).len(), 3);
        assert_eq!(log.chunks_from(5, 1).len(), 1, "at least one chunk");
        assert_eq!(log.chunks_from(5, u64::MAX)[0].first, 4);
        let before = log.chunks_read.load(Ordering::Relaxed);
        let messages = log.read_many(&all, |c| c.first % 4 == 0).unwrap();
        let offsets: Vec<u64> = messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![0, 1, 4, 5, 8, 9, 12, 13, 16, 17]);
        assert_eq!(&messages[2].body[..], b"m2");
        // Each message carries its own offset as a header, as written.
        for m in &messages {
            assert_eq!(
                offset_header(&m.raw_properties),
                Some(AMQPValue::LongLongInt(m.offset as i64))
            );
        }
        assert_eq!(log.chunks_read.load(Ordering::Relaxed) - before, 5);
    }
}

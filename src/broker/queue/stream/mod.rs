//! Stream queue: an append-only log that consumers read from any offset,
//! each at its own position. Messages are never removed by acks (an ack
//! only returns prefetch credit); retention drops whole old segments.
//!
//! Each consumer is a reader task that follows the log: it reads a chunk
//! at a time from disk and delivers while it has credit, then waits for an
//! ack (credit), for the socket to drain, or for new chunks at the tail.
//!
//! Beyond RabbitMQ: a consumer that passes `x-stream-consumer-name` has its
//! last acked offset stored by the broker; consuming again under that name
//! without `x-stream-offset` resumes after it.

pub mod arguments;
mod reader;
pub mod rules;

pub use arguments::{Filter, OffsetSpec};

use super::{Consumer, Queue};
use crate::broker::arguments::as_string;
use crate::broker::message::Message;
use crate::protocol::{AMQPValue, AmqpError};
use crate::store::stream_log::{Retention, StreamEntry, StreamLog};
use crate::store::{MessageLog, Store};
use parking_lot::Mutex;
use reader::Reader;
use std::collections::HashMap;
use std::sync::Arc;

/// Consumer argument naming a consumer whose offset the broker tracks.
pub const CONSUMER_NAME_ARG: &str = "x-stream-consumer-name";

pub struct Stream {
    pub log: Arc<StreamLog>,
    /// The writer that syncs stream chunks with everything else.
    writer: Arc<MessageLog>,
    readers: Mutex<Vec<Arc<Reader>>>,
    /// Tracked consumer offsets: the catalog tree and the key prefix.
    offsets: Option<(sled::Tree, Vec<u8>)>,
    /// name -> last acked offset, and whether it changed since stored.
    tracked: Mutex<HashMap<String, (u64, bool)>>,
}

impl Stream {
    pub fn new(
        log: Arc<StreamLog>,
        writer: Arc<MessageLog>,
        offsets: Option<sled::Tree>,
        vhost: &str,
        name: &str,
    ) -> Stream {
        let prefix = [vhost.as_bytes(), &[0], name.as_bytes(), &[0]].concat();
        let mut tracked = HashMap::new();
        if let Some(tree) = &offsets {
            for (key, value) in tree.scan_prefix(&prefix).filter_map(|r| r.ok()) {
                let (Ok(consumer), Ok(bytes)) = (
                    std::str::from_utf8(&key[prefix.len()..]),
                    <[u8; 8]>::try_from(&value[..]),
                ) else {
                    continue;
                };
                tracked.insert(consumer.to_string(), (u64::from_be_bytes(bytes), false));
            }
        }
        Stream {
            log,
            writer,
            readers: Mutex::new(Vec::new()),
            offsets: offsets.map(|tree| (tree, prefix)),
            tracked: Mutex::new(tracked),
        }
    }

    /// Opens the log of stream queue `name` of `vhost` in `store` (created
    /// if new); `resource` is `queue 'q' in vhost 'v'`.
    pub fn open(
        store: Option<&Store>,
        vhost: &str,
        name: &str,
        retention: Retention,
        resource: &str,
    ) -> Result<Stream, AmqpError> {
        let Some(store) = store else {
            return Err(AmqpError::precondition_failed(
                "stream queues need a data directory",
            ));
        };
        let dir = store.stream_dir(vhost, name);
        let log = StreamLog::open(&dir, retention).map_err(|e| {
            tracing::error!(queue = name, dir = %dir.display(), "cannot open stream: {e:#}");
            AmqpError::internal(format!("cannot open stream {resource}"))
        })?;
        let offsets = store
            .catalog
            .tree("stream_offsets")
            .map_err(|e| tracing::error!("cannot open the stream offsets tree: {e:#}"))
            .ok();
        Ok(Stream::new(
            Arc::new(log),
            store.log.clone(),
            offsets,
            vhost,
            name,
        ))
    }

    /// Appends a message; returns the log sequence a confirm waits for.
    pub fn append(&self, message: Arc<Message>) -> u64 {
        let filter_value = message
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-filter-value"))
            .and_then(as_string);
        self.writer.append_stream(
            self.log.clone(),
            StreamEntry {
                filter_value,
                persistent: message.is_persistent(),
                message,
            },
        )
    }

    /// Messages retained.
    pub fn message_count(&self) -> usize {
        let (first, next) = self.log.bounds();
        (next - first) as usize
    }

    pub fn consumer_count(&self) -> usize {
        self.readers.lock().len()
    }

    /// The offset a new consumer starts at: its spec, else after its
    /// tracked offset (named consumers), else the next message.
    pub fn start_offset(&self, spec: Option<OffsetSpec>, name: Option<&str>) -> u64 {
        let spec = match (spec, name) {
            (Some(spec), _) => spec,
            (None, Some(name)) => match self.tracked.lock().get(name) {
                Some((offset, _)) => OffsetSpec::Offset(offset + 1),
                None => OffsetSpec::Next,
            },
            (None, None) => OffsetSpec::Next,
        };
        let (first, next) = self.log.bounds();
        match spec {
            OffsetSpec::First => first,
            OffsetSpec::Last => self.log.last_chunk_start(),
            OffsetSpec::Next => next,
            OffsetSpec::Offset(n) => n.max(first),
            OffsetSpec::Timestamp(ms) => self.log.offset_at_time(ms),
        }
    }

    /// Starts a reader task for `consumer` on `queue` (this stream's queue).
    pub fn add_consumer(
        &self,
        queue: &Arc<Queue>,
        consumer: Arc<Consumer>,
        spec: Option<OffsetSpec>,
        filter: Option<Filter>,
    ) {
        let name = consumer_name(&consumer);
        let start = self.start_offset(spec, name.as_deref());
        self.start_reader(queue, consumer, start, filter, None);
    }

    /// Starts a reader task at offset `start`. `extra_headers`, when given,
    /// are encoded header fields added to every delivery (consumer groups
    /// name the partition this way); they may change while it runs.
    pub fn start_reader(
        &self,
        queue: &Arc<Queue>,
        consumer: Arc<Consumer>,
        start: u64,
        filter: Option<Filter>,
        extra_headers: Option<Arc<Mutex<bytes::Bytes>>>,
    ) {
        let reader = Arc::new(Reader::new(consumer));
        self.readers.lock().push(reader.clone());
        tokio::spawn(reader::run(
            queue.clone(),
            reader,
            start,
            filter,
            extra_headers,
        ));
    }

    /// Stops the reader of consumer `tag` on `channel`.
    pub fn remove_consumer(&self, tag: &str, channel: (u64, u16)) -> Option<Arc<Consumer>> {
        self.remove_reader_where(|c| &*c.tag == tag && c.on_channel(channel))
    }

    /// Stops the reader serving exactly this consumer.
    pub fn remove_reader_of(&self, consumer: &Arc<Consumer>) -> bool {
        self.remove_reader_where(|c| std::ptr::eq(c, &**consumer))
            .is_some()
    }

    fn remove_reader_where(&self, which: impl Fn(&Consumer) -> bool) -> Option<Arc<Consumer>> {
        let reader = {
            let mut readers = self.readers.lock();
            let pos = readers.iter().position(|r| which(&r.consumer))?;
            readers.remove(pos)
        };
        reader.stop();
        self.store_tracked();
        Some(reader.consumer.clone())
    }

    /// Credit came back or the socket drained: readers try again.
    pub fn wake(&self) {
        for reader in self.readers.lock().iter() {
            reader.wake.notify_one();
        }
    }

    /// A consumer acked up to `offset`: remembered if it is named.
    pub fn track(&self, consumer: &Consumer, offset: u64) {
        if let Some(name) = consumer_name(consumer) {
            let mut tracked = self.tracked.lock();
            let entry = tracked.entry(name).or_insert((offset, true));
            if offset >= entry.0 {
                *entry = (offset, true);
            }
        }
    }

    /// Writes changed tracked offsets to the catalog (sled flushes them
    /// within its flush interval; see docs/streams.md).
    pub fn store_tracked(&self) {
        let Some((tree, prefix)) = &self.offsets else {
            return;
        };
        for (name, (offset, dirty)) in self.tracked.lock().iter_mut() {
            if *dirty {
                *dirty = false;
                let key = [prefix.as_slice(), name.as_bytes()].concat();
                if let Err(e) = tree.insert(key, &offset.to_be_bytes()) {
                    tracing::warn!("cannot store a stream consumer offset: {e}");
                }
            }
        }
    }

    /// The tracked offset of a named consumer.
    pub fn tracked_offset(&self, name: &str) -> Option<u64> {
        self.tracked.lock().get(name).map(|(o, _)| *o)
    }

    /// The queue is gone: readers stop, files and tracked offsets go.
    pub fn destroy(&self) -> Vec<Arc<Consumer>> {
        let readers = std::mem::take(&mut *self.readers.lock());
        for reader in &readers {
            reader.stop();
        }
        self.log.destroy();
        if let Some((tree, prefix)) = &self.offsets {
            for key in tree.scan_prefix(prefix).keys().filter_map(|k| k.ok()) {
                let _ = tree.remove(key);
            }
        }
        readers.into_iter().map(|r| r.consumer.clone()).collect()
    }

    /// Reader tasks stop on their own once the queue is marked deleted;
    /// this one is for a broker shutdown (nothing to delete).
    pub fn stop_readers(&self) {
        for reader in std::mem::take(&mut *self.readers.lock()) {
            reader.stop();
        }
    }
}

/// The highest offset each stream consumer acked in one settle, so that
/// each is tracked once (nothing allocated unless a stream was acked).
#[derive(Default)]
pub(crate) struct AckedOffsets(Vec<(Arc<Queue>, Arc<Consumer>, u64)>);

impl AckedOffsets {
    pub(crate) fn acked(&mut self, queue: &Arc<Queue>, consumer: &Arc<Consumer>, offset: u64) {
        match self.0.iter_mut().find(|(_, c, _)| Arc::ptr_eq(c, consumer)) {
            Some(acked) => acked.2 = acked.2.max(offset),
            None => self.0.push((queue.clone(), consumer.clone(), offset)),
        }
    }

    /// Moves each named consumer's tracked offset.
    pub(crate) fn track(self) {
        for (queue, consumer, offset) in self.0 {
            if let Some(stream) = queue.stream() {
                stream.track(&consumer, offset);
            }
        }
    }
}

/// A stream consumer's start (`x-stream-offset`) and filter, or RabbitMQ's
/// error for bad values; `resource` is `queue 'q' in vhost 'v'`.
pub fn consume_options(
    resource: &str,
    args: &crate::protocol::FieldTable,
) -> Result<(Option<OffsetSpec>, Option<Filter>), AmqpError> {
    let failed = |reason: String| {
        AmqpError::precondition_failed(format!("failed consuming from stream {resource}: {reason}"))
    };
    let spec = match args.inner().get("x-stream-offset") {
        Some(value) => Some(arguments::parse_offset(value).map_err(failed)?),
        None => None,
    };
    let filter = Filter::from_arguments(args).map_err(|e| failed(e.to_string()))?;
    Ok((spec, filter))
}

fn consumer_name(consumer: &Consumer) -> Option<String> {
    match consumer.arguments.inner().get(CONSUMER_NAME_ARG) {
        Some(value @ (AMQPValue::LongString(_) | AMQPValue::ShortString(_))) => as_string(value),
        _ => None,
    }
}

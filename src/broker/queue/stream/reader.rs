//! One stream consumer's reader task: follows the log from its offset and
//! delivers while the consumer has credit.

use super::Filter;
use crate::broker::message::Message;
use crate::broker::queue::{Consumer, Credit, Queue, QueuedMessage};
use crate::store::stream_log::{with_header_fields, ChunkInfo, StoredMessage};
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub struct Reader {
    pub consumer: Arc<Consumer>,
    /// Credit returned, socket drained, or stop requested. A permit is kept
    /// when nobody waits, so a wake between a check and the wait is not lost.
    pub wake: Notify,
    stopped: AtomicBool,
    /// Held while handing a message over, so that `stop` returning means
    /// no delivery is in flight or will follow (a consumer group hands the
    /// partition over right after).
    delivering: Mutex<()>,
}

impl Reader {
    pub fn new(consumer: Arc<Consumer>) -> Reader {
        Reader {
            consumer,
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            delivering: Mutex::new(()),
        }
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        drop(self.delivering.lock());
        self.wake.notify_one();
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

impl Filter {
    /// Whether a chunk may hold a message this consumer wants.
    fn chunk_may_match(&self, chunk: &ChunkInfo) -> bool {
        (self.match_unfiltered && chunk.has_unfiltered)
            || (chunk.has_filtered
                && self
                    .values
                    .iter()
                    .any(|v| chunk.bloom.may_contain(v.as_bytes())))
    }

    fn matches(&self, message: &StoredMessage) -> bool {
        match &message.filter_value {
            None => self.match_unfiltered,
            Some(value) => self.values.iter().any(|v| v.as_bytes() == &value[..]),
        }
    }
}

pub async fn run(
    queue: Arc<Queue>,
    reader: Arc<Reader>,
    mut next: u64,
    filter: Option<Filter>,
    extra_headers: Option<Arc<Mutex<Bytes>>>,
) {
    let Some(stream) = queue.stream().cloned() else {
        return;
    };
    let filter = filter.map(Arc::new);
    let mut committed = stream.log.committed();
    // The chunk being delivered, from `next` on.
    let mut pending = Vec::<StoredMessage>::new().into_iter();
    loop {
        if reader.stopped() || queue.is_deleted() {
            return;
        }
        match reader.consumer.credit() {
            Credit::Yes => {}
            Credit::No => {
                reader.wake.notified().await;
                continue;
            }
            Credit::Saturated => {
                reader
                    .consumer
                    .sink
                    .wake_when_writable(Arc::downgrade(&queue));
                reader.wake.notified().await;
                continue;
            }
        }
        if pending.len() == 0 {
            let end = *committed.borrow_and_update();
            let chunks = if next < end {
                stream.log.chunks_from(next, READ_AHEAD_BYTES)
            } else {
                Vec::new()
            };
            let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
                tokio::select! {
                    changed = committed.changed() => if changed.is_err() { return },
                    _ = reader.wake.notified() => {}
                }
                continue;
            };
            // Retention may have removed what we were about to read.
            next = next.max(first.first);
            let after = last.end();
            let first_offset = first.first;
            let read = if stream.log.in_tail_segment(last) {
                // Just written: in the page cache, read right here.
                stream.log.read_many(&chunks, wanted(filter.as_deref()))
            } else {
                // Older chunks may have to come from the disk: not on an
                // async worker, whose other connections would wait.
                let log = stream.log.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || {
                    log.read_many(&chunks, wanted(filter.as_deref()))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            };
            match read {
                Ok(messages) => {
                    // Offsets ascend: skip what comes before `next`.
                    pending = messages.into_iter();
                    while pending.as_slice().first().is_some_and(|m| m.offset < next) {
                        pending.next();
                    }
                    if pending.len() == 0 {
                        next = after;
                        continue;
                    }
                }
                Err(e) => {
                    if !stream.log.is_deleted() {
                        tracing::warn!(queue = %queue.name, offset = first_offset, "cannot read stream chunks, skipped: {e}");
                    }
                    next = after;
                    continue;
                }
            }
        }
        for stored in pending.by_ref() {
            next = stored.offset + 1;
            if filter.as_ref().is_some_and(|f| !f.matches(&stored)) {
                continue;
            }
            {
                let _delivering = reader.delivering.lock();
                if reader.stopped() {
                    return;
                }
                deliver(&queue, &reader.consumer, stored, extra_headers.as_deref());
            }
            if reader.consumer.credit() != Credit::Yes {
                break;
            }
        }
        // Let other tasks on this worker run between chunks.
        tokio::task::yield_now().await;
    }
}

/// Which chunks a consumer with `filter` reads.
fn wanted(filter: Option<&Filter>) -> impl Fn(&ChunkInfo) -> bool + '_ {
    move |chunk| filter.is_none_or(|f| f.chunk_may_match(chunk))
}

/// Most bytes of adjacent chunks read at once: a group commit of a few
/// transient messages makes a small chunk, and one read per chunk would
/// cost more than the messages.
const READ_AHEAD_BYTES: u64 = 1 << 20;

fn deliver(
    queue: &Arc<Queue>,
    consumer: &Arc<Consumer>,
    mut stored: StoredMessage,
    extra_headers: Option<&Mutex<Bytes>>,
) {
    if let Some(fields) = extra_headers {
        stored.raw_properties = with_header_fields(&stored.raw_properties, &fields.lock());
    }
    let message = Message {
        exchange: stored.exchange,
        routing_key: stored.routing_key,
        // Deliveries send the raw properties; nothing reads parsed ones of
        // a stream message.
        properties: crate::protocol::no_properties(),
        raw_properties: stored.raw_properties,
        body: stored.body,
        store_id: None,
    };
    queue.stream_delivered(consumer.no_ack);
    consumer.sink.deliver(
        consumer,
        queue,
        QueuedMessage {
            seq: stored.offset,
            message: Arc::new(message),
            redelivered: false,
            expires_at: None,
            delivery_count: 0,
        },
    );
}

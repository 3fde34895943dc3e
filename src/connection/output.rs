//! The write side of a connection: everything the broker sends is encoded
//! at once, by the sender, into the connection's shared write buffer; one
//! writer task swaps that buffer out and writes it with one syscall.
//!
//! Encoding at send time means no queue of items between the two: no
//! allocation, no `Arc<Message>` kept alive (and then freed on another
//! thread) per delivery. The writer is woken only when the buffer goes from
//! empty to non-empty, and everything added meanwhile rides along.
//!
//! Back-pressure: encoded bytes not yet written are counted in
//! `pending_bytes`; past `HIGH_WATER` consumers on this connection get no
//! more messages until the writer drains below `LOW_WATER` and wakes the
//! queues that held back, and the connection stops reading its socket
//! (see `drained`): a client that sends without reading what it is sent
//! (returned messages, confirms) meets TCP back-pressure instead of
//! growing this buffer without bound.

use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::protocol::{encode, AMQPClass};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

const HIGH_WATER: usize = 4 * 1024 * 1024;
const LOW_WATER: usize = HIGH_WATER / 2;
/// Write buffers keep their capacity while the connection is busy (growing
/// them again is a realloc and a copy); after `IDLE_SHRINK` without writes,
/// buffers larger than `IDLE_CAPACITY` are let go, so that a burst does not
/// pin memory on a quiet connection. One message larger than
/// `MAX_KEPT_CAPACITY` drops its buffer at once.
const IDLE_CAPACITY: usize = 64 * 1024;
const MAX_KEPT_CAPACITY: usize = 16 * 1024 * 1024;
const IDLE_SHRINK: Duration = Duration::from_secs(1);

pub enum Outbound {
    Method(u16, Box<AMQPClass>),
    Deliver {
        channel: u16,
        consumer_tag: Arc<str>,
        delivery_tag: u64,
        redelivered: bool,
        message: Arc<Message>,
    },
    GetOk {
        channel: u16,
        delivery_tag: u64,
        redelivered: bool,
        message_count: u32,
        message: Arc<Message>,
    },
    Return {
        channel: u16,
        reply_code: u16,
        reply_text: &'static str,
        message: Arc<Message>,
    },
    /// Raw bytes (the protocol header answer).
    Raw(&'static [u8]),
    /// Write everything before this, then close the socket.
    Close,
}

/// What senders and the writer share.
struct Pending {
    /// Encoded frames waiting for the writer.
    buf: BytesMut,
    /// `Close` was sent: nothing more is accepted.
    closing: bool,
    /// The writer is gone (socket closed or failed): nothing is accepted.
    dead: bool,
}

pub struct Output {
    pending: Mutex<Pending>,
    /// Wakes the writer when `pending.buf` stops being empty.
    notify: Notify,
    /// Notified when the writer drains below `LOW_WATER`, or stops.
    drained: Notify,
    pending_bytes: AtomicUsize,
    wakeups: Mutex<Vec<Weak<Queue>>>,
    frame_max: AtomicU32,
    /// Negotiated heartbeat in seconds (0 = off); the writer sends one
    /// after half of it passes without other writes.
    heartbeat: AtomicU16,
}

impl Output {
    /// Creates the output and spawns its writer task on `writer`.
    pub fn start<W: AsyncWrite + Unpin + Send + 'static>(writer: W, frame_max: u32) -> Arc<Output> {
        let output = Arc::new(Output {
            pending: Mutex::new(Pending {
                buf: BytesMut::new(),
                closing: false,
                dead: false,
            }),
            notify: Notify::new(),
            drained: Notify::new(),
            pending_bytes: AtomicUsize::new(0),
            wakeups: Mutex::new(Vec::new()),
            frame_max: AtomicU32::new(frame_max),
            heartbeat: AtomicU16::new(0),
        });
        tokio::spawn(write_loop(output.clone(), writer));
        output
    }

    pub fn set_frame_max(&self, frame_max: u32) {
        self.frame_max.store(frame_max, Ordering::Relaxed);
    }

    pub fn set_heartbeat(&self, secs: u16) {
        self.heartbeat.store(secs, Ordering::Relaxed);
    }

    pub fn send(&self, item: Outbound) {
        let frame_max = self.frame_max.load(Ordering::Relaxed);
        let mut pending = self.pending.lock();
        // After Close, or once the socket is gone, everything is dropped:
        // the connection task is ending and requeues what was unacked.
        if pending.closing || pending.dead {
            return;
        }
        let was_empty = pending.buf.is_empty();
        let before = pending.buf.len();
        match &item {
            Outbound::Close => pending.closing = true,
            item => encode_item(&mut pending.buf, item, frame_max),
        }
        // Counted before the writer can take (and subtract) these bytes.
        let added = pending.buf.len() - before;
        if added > 0 {
            self.pending_bytes.fetch_add(added, Ordering::Relaxed);
        }
        drop(pending);
        if was_empty {
            self.notify.notify_one();
        }
    }

    pub fn method(&self, channel: u16, method: AMQPClass) {
        self.send(Outbound::Method(channel, Box::new(method)));
    }

    pub fn is_saturated(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) >= HIGH_WATER
    }

    /// Resolves once what waits to be written is below `LOW_WATER`, or the
    /// writer has stopped.
    pub async fn drained(&self) {
        loop {
            // Registered before the check: a drain in between still wakes.
            let notified = self.drained.notified();
            if self.pending_bytes.load(Ordering::Relaxed) < LOW_WATER || self.pending.lock().dead {
                return;
            }
            notified.await;
        }
    }

    /// Called by a queue, with its lock held, when this connection's
    /// consumers could not take more. Never dispatches synchronously: that
    /// would take the caller's queue lock again.
    pub fn wake_when_writable(self: &Arc<Self>, queue: Weak<Queue>) {
        let mut wakeups = self.wakeups.lock();
        if !wakeups.iter().any(|w| w.ptr_eq(&queue)) {
            wakeups.push(queue);
        }
        drop(wakeups);
        // The writer may have drained between the queue's check and the
        // registration above; then nobody else would wake the queue.
        if !self.is_saturated() {
            let output = self.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { output.wake_queues() });
            }
        }
    }

    fn wake_queues(&self) {
        let queues = std::mem::take(&mut *self.wakeups.lock());
        for queue in queues.iter().filter_map(Weak::upgrade) {
            queue.dispatch();
        }
    }
}

fn encode_item(buf: &mut BytesMut, item: &Outbound, frame_max: u32) {
    match item {
        Outbound::Method(channel, method) => encode::method(buf, *channel, method),
        Outbound::Deliver {
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            message,
        } => {
            encode::deliver(
                buf,
                *channel,
                consumer_tag,
                *delivery_tag,
                *redelivered,
                &message.exchange,
                &message.routing_key,
            );
            encode::content(
                buf,
                *channel,
                &message.raw_properties,
                &message.body,
                frame_max,
            );
        }
        Outbound::GetOk {
            channel,
            delivery_tag,
            redelivered,
            message_count,
            message,
        } => {
            use amq_protocol::protocol::basic::{AMQPMethod, GetOk};
            let get_ok = AMQPClass::Basic(AMQPMethod::GetOk(GetOk {
                delivery_tag: *delivery_tag,
                redelivered: *redelivered,
                exchange: crate::protocol::text::short(message.exchange.as_str()),
                routing_key: crate::protocol::text::short(message.routing_key.as_str()),
                message_count: *message_count,
            }));
            encode::method(buf, *channel, &get_ok);
            encode::content(
                buf,
                *channel,
                &message.raw_properties,
                &message.body,
                frame_max,
            );
        }
        Outbound::Return {
            channel,
            reply_code,
            reply_text,
            message,
        } => {
            use amq_protocol::protocol::basic::{AMQPMethod, Return};
            let ret = AMQPClass::Basic(AMQPMethod::Return(Return {
                reply_code: *reply_code,
                reply_text: (*reply_text).into(),
                exchange: crate::protocol::text::short(message.exchange.as_str()),
                routing_key: crate::protocol::text::short(message.routing_key.as_str()),
            }));
            encode::method(buf, *channel, &ret);
            encode::content(
                buf,
                *channel,
                &message.raw_properties,
                &message.body,
                frame_max,
            );
        }
        Outbound::Raw(bytes) => buf.extend_from_slice(bytes),
        Outbound::Close => {}
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(output: Arc<Output>, mut writer: W) {
    // The buffer being written; swapped with the shared one each round so
    // that both keep their capacity.
    let mut buf = BytesMut::new();
    let mut last_write = Instant::now();
    loop {
        let closing = {
            let mut pending = output.pending.lock();
            std::mem::swap(&mut pending.buf, &mut buf);
            pending.closing
        };
        // Heartbeats are not counted in `pending_bytes`; the rest was, when
        // it was encoded.
        let mut uncounted = 0;
        if buf.is_empty() && !closing {
            let heartbeat = output.heartbeat.load(Ordering::Relaxed);
            let interval = Duration::from_millis(heartbeat as u64 * 500);
            let large = buf.capacity() > IDLE_CAPACITY;
            tokio::select! {
                _ = output.notify.notified() => continue,
                _ = tokio::time::sleep_until(last_write + IDLE_SHRINK), if large => {
                    buf = BytesMut::new();
                    let mut pending = output.pending.lock();
                    if pending.buf.is_empty() {
                        pending.buf = BytesMut::new();
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(last_write + interval), if heartbeat > 0 => {
                    encode::heartbeat(&mut buf);
                    uncounted = buf.len();
                }
            }
        }
        let written = buf.len();
        if written > 0 {
            // A plain socket's flush does nothing; a TLS stream's sends the
            // records it still holds.
            if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                break;
            }
            buf.clear();
            if buf.capacity() > MAX_KEPT_CAPACITY {
                buf = BytesMut::new();
            }
            last_write = Instant::now();
            let drained = written - uncounted;
            let before = output.pending_bytes.fetch_sub(drained, Ordering::Relaxed);
            if before - drained < LOW_WATER {
                if before >= LOW_WATER {
                    output.drained.notify_waiters();
                }
                if !output.wakeups.lock().is_empty() {
                    output.wake_queues();
                }
            }
        }
        if closing {
            break;
        }
    }
    {
        let mut pending = output.pending.lock();
        pending.dead = true;
        pending.buf = BytesMut::new();
    }
    output.drained.notify_waiters();
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BasicProperties, Frame, FrameDecoder};
    use amq_protocol::protocol::basic::AMQPMethod;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    fn message(body: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            "ex".into(),
            "rk".into(),
            BasicProperties::default(),
            encode::properties(&BasicProperties::default()),
            Bytes::from_static(body),
        ))
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_close_ends_the_stream() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let output = Output::start(ours, 4096);
        output.method(
            1,
            AMQPClass::Basic(AMQPMethod::QosOk(amq_protocol::protocol::basic::QosOk {})),
        );
        for tag in 1..=3 {
            output.send(Outbound::Deliver {
                channel: 1,
                consumer_tag: Arc::from("ctag"),
                delivery_tag: tag,
                redelivered: false,
                message: message(b"hello"),
            });
        }
        assert!(output.pending_bytes.load(Ordering::Relaxed) > 0);
        output.send(Outbound::Close);
        // Dropped: sent after Close.
        output.send(Outbound::Raw(b"late"));
        let mut bytes = Vec::new();
        theirs.read_to_end(&mut bytes).await.unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let decoder = FrameDecoder::new(4096);
        let mut seen = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            seen.push(match frame {
                Frame::Method { method, .. } => match *method {
                    AMQPClass::Basic(AMQPMethod::Deliver(d)) => {
                        format!("deliver {}", d.delivery_tag)
                    }
                    other => format!("{other:?}"),
                },
                Frame::Header { body_size, .. } => format!("header {body_size}"),
                Frame::Body { payload, .. } => format!("body {}", payload.len()),
                Frame::Heartbeat { .. } => "heartbeat".into(),
            });
        }
        assert!(buf.is_empty());
        assert_eq!(seen.len(), 10, "{seen:?}");
        assert!(seen[0].contains("QosOk"), "{seen:?}");
        for (i, tag) in (1..=3).enumerate() {
            assert_eq!(seen[1 + 3 * i], format!("deliver {tag}"));
            assert_eq!(seen[2 + 3 * i], "header 5");
            assert_eq!(seen[3 + 3 * i], "body 5");
        }
        assert_eq!(output.pending_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn idle_writer_sends_heartbeats() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let output = Output::start(ours, 4096);
        output.set_heartbeat(1);
        // Wake the writer so that it picks up the heartbeat setting.
        output.send(Outbound::Raw(b""));
        output.send(Outbound::Raw(b"x"));
        let mut first = [0u8; 1];
        theirs.read_exact(&mut first).await.unwrap();
        let mut frame = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(3), theirs.read_exact(&mut frame))
            .await
            .expect("a heartbeat within 3 s")
            .unwrap();
        assert_eq!(frame, [8, 0, 0, 0, 0, 0, 0, 0xCE]);
        assert_eq!(output.pending_bytes.load(Ordering::Relaxed), 0);
    }
}

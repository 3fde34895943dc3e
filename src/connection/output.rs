//! The write side of a connection: everything the broker sends goes through
//! one unbounded channel to one writer task, which encodes a batch of
//! outbound items into a buffer and writes it with one syscall.
//!
//! Back-pressure: deliveries are counted in `pending_bytes`; past
//! `HIGH_WATER` consumers on this connection get no more messages until the
//! writer drains below `LOW_WATER` and wakes the queues that held back.

use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::protocol::{encode, AMQPClass};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

const HIGH_WATER: usize = 4 * 1024 * 1024;
const LOW_WATER: usize = HIGH_WATER / 2;
/// Fixed cost counted per delivery besides its body.
const DELIVERY_OVERHEAD: usize = 256;

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

pub struct Output {
    tx: mpsc::UnboundedSender<Outbound>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let output = Arc::new(Output {
            tx,
            pending_bytes: AtomicUsize::new(0),
            wakeups: Mutex::new(Vec::new()),
            frame_max: AtomicU32::new(frame_max),
            heartbeat: AtomicU16::new(0),
        });
        tokio::spawn(write_loop(output.clone(), rx, writer));
        output
    }

    pub fn set_frame_max(&self, frame_max: u32) {
        self.frame_max.store(frame_max, Ordering::Relaxed);
    }

    pub fn set_heartbeat(&self, secs: u16) {
        self.heartbeat.store(secs, Ordering::Relaxed);
    }

    pub fn send(&self, item: Outbound) {
        if let Outbound::Deliver { message, .. } | Outbound::GetOk { message, .. } = &item {
            self.pending_bytes
                .fetch_add(message.body_size() + DELIVERY_OVERHEAD, Ordering::Relaxed);
        }
        // A send fails only when the writer is gone (socket closed): the
        // connection task is ending too and requeues what was unacked.
        let _ = self.tx.send(item);
    }

    pub fn method(&self, channel: u16, method: AMQPClass) {
        self.send(Outbound::Method(channel, Box::new(method)));
    }

    pub fn is_saturated(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) >= HIGH_WATER
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

    fn encode(&self, buf: &mut BytesMut, item: &Outbound) -> (usize, bool) {
        let frame_max = self.frame_max.load(Ordering::Relaxed);
        match item {
            Outbound::Method(channel, method) => {
                encode::method(buf, *channel, method);
                (0, false)
            }
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
                (message.body_size() + DELIVERY_OVERHEAD, false)
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
                (message.body_size() + DELIVERY_OVERHEAD, false)
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
                (0, false)
            }
            Outbound::Raw(bytes) => {
                buf.extend_from_slice(bytes);
                (0, false)
            }
            Outbound::Close => (0, true),
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    output: Arc<Output>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    mut writer: W,
) {
    let mut batch = Vec::with_capacity(256);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut last_write = Instant::now();
    loop {
        let heartbeat = output.heartbeat.load(Ordering::Relaxed);
        let interval = Duration::from_millis(heartbeat as u64 * 500);
        tokio::select! {
            received = rx.recv_many(&mut batch, 256) => {
                if received == 0 {
                    break;
                }
            }
            _ = tokio::time::sleep_until(last_write + interval), if heartbeat > 0 => {
                encode::heartbeat(&mut buf);
            }
        }
        let mut drained = 0;
        let mut close = false;
        for item in batch.drain(..) {
            let (bytes, is_close) = output.encode(&mut buf, &item);
            drained += bytes;
            if is_close {
                close = true;
                break;
            }
        }
        if !buf.is_empty() {
            if writer.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
            if buf.capacity() > 4 * 1024 * 1024 {
                buf = BytesMut::with_capacity(64 * 1024);
            }
            last_write = Instant::now();
        }
        if drained > 0 {
            let before = output.pending_bytes.fetch_sub(drained, Ordering::Relaxed);
            if before - drained < LOW_WATER && !output.wakeups.lock().is_empty() {
                output.wake_queues();
            }
        }
        if close {
            break;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

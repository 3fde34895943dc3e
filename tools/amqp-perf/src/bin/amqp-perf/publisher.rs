//! Publishers: each has its own connection. Messages are copied from a
//! pre-encoded template (basic.publish + content header + body frames made
//! once with `broker::protocol::encode`), the send timestamp is patched into
//! the first 8 body bytes, and a whole batch goes out in one write.

use crate::stats::{now_nanos, Counters};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass, BasicProperties};
use amqp_perf::client::{send_close, AmqpUri, Conn, ReadSide};
use anyhow::{bail, Result};
use broker::protocol::{encode, Frame, FRAME_BODY};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify};

#[derive(Clone, Debug)]
pub struct PublishSpec {
    pub exchange: String,
    pub routing_key: String,
    pub size: usize,
    pub persistent: bool,
    /// Most unconfirmed messages in flight; 0 disables confirms.
    pub confirm: u64,
    /// Messages per second for this publisher; 0 = as fast as possible.
    pub rate: f64,
    /// Stop after this many messages (0 = until stopped).
    pub count: u64,
    /// Per-message TTL (the `expiration` property), in ms.
    pub expiration: Option<u64>,
    /// Pause while (published x fanout - consumed) exceeds this (0 = off).
    pub max_backlog: u64,
    /// Deliveries expected per published message (queues it reaches).
    pub fanout: u64,
    /// Whether anyone consumes (the backlog guard needs consumers).
    pub has_consumers: bool,
}

/// One message, encoded once.
pub struct Template {
    pub bytes: Vec<u8>,
    /// Where the 8-byte timestamp goes, if the body has room for it.
    pub ts_offset: Option<usize>,
}

pub fn build_template(spec: &PublishSpec, frame_max: u32) -> Template {
    let mut buf = BytesMut::new();
    encode::method(
        &mut buf,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: spec.exchange.as_str().into(),
            routing_key: spec.routing_key.as_str().into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let mut props = BasicProperties::default();
    if spec.persistent {
        props = props.with_delivery_mode(2);
    }
    if let Some(ms) = spec.expiration {
        props = props.with_expiration(ms.to_string().as_str().into());
    }
    let raw_props = encode::properties(&props);
    let content_start = buf.len();
    let body: Vec<u8> = (0..spec.size).map(|i| (i % 251) as u8).collect();
    encode::content(&mut buf, 1, &raw_props, &body, frame_max);
    // Header frame: 7 bytes of envelope, 12 fixed, the properties, frame-end.
    let body_frame = content_start + 7 + 12 + raw_props.len() + 1;
    let ts_offset = (spec.size >= 8).then_some(body_frame + 7);
    if let Some(off) = ts_offset {
        debug_assert_eq!(buf[body_frame], FRAME_BODY);
        debug_assert!(off + 8 <= buf.len());
    }
    Template {
        bytes: buf.to_vec(),
        ts_offset,
    }
}

/// Publisher-confirm bookkeeping shared with the connection's reader task.
#[derive(Default)]
struct Confirms {
    /// Messages acked or nacked so far.
    settled: AtomicU64,
    notify: Notify,
    closed: AtomicBool,
    error: Mutex<Option<String>>,
}

/// Settles delivery tags; acks may be single and out of order.
#[derive(Default)]
pub(crate) struct Tracker {
    upto: u64,
    singles: BTreeSet<u64>,
}

impl Tracker {
    /// Returns how many tags this ack settled.
    pub(crate) fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        let before = self.upto + self.singles.len() as u64;
        if multiple {
            if tag > self.upto {
                self.upto = tag;
                self.singles = self.singles.split_off(&(tag + 1));
            }
        } else if tag > self.upto {
            self.singles.insert(tag);
        }
        while self.singles.remove(&(self.upto + 1)) {
            self.upto += 1;
        }
        (self.upto + self.singles.len() as u64).saturating_sub(before)
    }
}

pub struct PublisherResult {
    pub sent: u64,
    pub error: Option<String>,
}

pub async fn run(
    uri: AmqpUri,
    spec: PublishSpec,
    id: usize,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<PublisherResult> {
    let mut conn = Conn::connect(&uri, &format!("amqp-perf publisher {id}")).await?;
    if spec.confirm > 0 {
        conn.confirm_select().await?;
    }
    let (read, mut write, frame_max) = conn.into_split();
    let confirms = Arc::new(Confirms::default());
    let reader = tokio::spawn(read_confirms(read, confirms.clone(), counters.clone()));

    let template = build_template(&spec, frame_max);
    let msg_len = template.bytes.len();
    // About 128 KiB per write, between 1 and 4096 messages.
    let batch_max = (128 * 1024 / msg_len).clamp(1, 4096) as u64;
    let mut wbuf: Vec<u8> = Vec::with_capacity(msg_len * batch_max as usize);
    let start = Instant::now();
    let mut sent: u64 = 0;

    'outer: loop {
        if *stop.borrow() || confirms.closed.load(Ordering::Acquire) {
            break;
        }
        let mut n = batch_max;
        if spec.count > 0 {
            n = n.min(spec.count - sent);
            if n == 0 {
                break;
            }
        }
        if spec.confirm > 0 {
            loop {
                let notified = confirms.notify.notified();
                let outstanding = sent - confirms.settled.load(Ordering::Acquire).min(sent);
                if outstanding < spec.confirm {
                    n = n.min(spec.confirm - outstanding);
                    break;
                }
                if confirms.closed.load(Ordering::Acquire) || *stop.borrow() {
                    break 'outer;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
        if spec.max_backlog > 0 && spec.has_consumers {
            let published = counters.published.load(Ordering::Relaxed);
            let consumed = counters.consumed.load(Ordering::Relaxed);
            if published
                .saturating_mul(spec.fanout)
                .saturating_sub(consumed)
                > spec.max_backlog.saturating_mul(spec.fanout)
            {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(1)).await;
                counters
                    .backlog_paused_us
                    .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                continue;
            }
        }
        if spec.rate > 0.0 {
            let elapsed = start.elapsed().as_secs_f64();
            let due = (spec.rate * elapsed) as u64 + 1;
            if due <= sent {
                let next = (sent as f64) / spec.rate;
                let wait = Duration::from_secs_f64((next - elapsed).max(0.0));
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(Duration::from_micros(100))) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            n = n.min(due - sent);
        }
        let ts = now_nanos().to_be_bytes();
        for _ in 0..n {
            let at = wbuf.len();
            wbuf.extend_from_slice(&template.bytes);
            if let Some(off) = template.ts_offset {
                wbuf[at + off..at + off + 8].copy_from_slice(&ts);
            }
        }
        if write.write_all(&wbuf).await.is_err() {
            break;
        }
        wbuf.clear();
        sent += n;
        counters.published.fetch_add(n, Ordering::Relaxed);
    }

    // With a fixed count, wait (bounded) for the last confirms.
    if spec.count > 0 && spec.confirm > 0 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while confirms.settled.load(Ordering::Acquire) < sent
            && !confirms.closed.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            let notified = confirms.notify.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
    send_close(&mut write).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), reader).await;
    let error = confirms.error.lock().clone();
    Ok(PublisherResult { sent, error })
}

/// Reads acks/nacks (and errors) from the broker until the connection ends.
async fn read_confirms(mut read: ReadSide, confirms: Arc<Confirms>, counters: Arc<Counters>) {
    let mut tracker = Tracker::default();
    let result: Result<()> = async {
        loop {
            while let Some(frame) = read.decode()? {
                let Frame::Method {
                    channel: ch,
                    method,
                } = frame
                else {
                    continue;
                };
                match *method {
                    AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                        let n = tracker.settle(ack.delivery_tag, ack.multiple);
                        counters.confirmed.fetch_add(n, Ordering::Relaxed);
                        confirms.settled.fetch_add(n, Ordering::Release);
                        confirms.notify.notify_one();
                    }
                    AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                        let n = tracker.settle(nack.delivery_tag, nack.multiple);
                        counters.nacked.fetch_add(n, Ordering::Relaxed);
                        confirms.settled.fetch_add(n, Ordering::Release);
                        confirms.notify.notify_one();
                    }
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => return Ok(()),
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                        bail!(
                            "broker closed the connection: {} {}",
                            c.reply_code,
                            c.reply_text
                        )
                    }
                    AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                        bail!(
                            "broker closed channel {ch}: {} {}",
                            c.reply_code,
                            c.reply_text
                        )
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) => {
                        eprintln!("publisher: connection blocked by broker: {}", b.reason);
                    }
                    _ => {}
                }
            }
            if read.fill(64 * 1024).await? == 0 {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        *confirms.error.lock() = Some(e.to_string());
    }
    confirms.closed.store(true, Ordering::Release);
    confirms.notify.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::protocol::FrameDecoder;

    #[test]
    fn tracker_handles_single_and_multiple() {
        let mut t = Tracker::default();
        assert_eq!(t.settle(2, false), 1);
        assert_eq!(t.settle(1, false), 1);
        assert_eq!(t.upto, 2);
        assert_eq!(t.settle(5, false), 1);
        assert_eq!(t.settle(4, true), 2);
        assert_eq!(t.upto, 5);
        assert_eq!(t.settle(3, true), 0);
    }

    #[test]
    fn template_decodes_and_carries_the_timestamp() {
        for size in [0usize, 7, 16, 1024, 300_000] {
            let spec = PublishSpec {
                exchange: "ex".into(),
                routing_key: "rk".into(),
                size,
                persistent: true,
                confirm: 0,
                rate: 0.0,
                count: 0,
                expiration: None,
                max_backlog: 0,
                fanout: 1,
                has_consumers: false,
            };
            let t = build_template(&spec, 131_072);
            let mut bytes = BytesMut::from(&t.bytes[..]);
            if let Some(off) = t.ts_offset {
                bytes[off..off + 8].copy_from_slice(&42u64.to_be_bytes());
            }
            let dec = FrameDecoder::new(131_072);
            let mut body = Vec::new();
            let mut header_size = None;
            while let Some(frame) = dec.decode(&mut bytes).unwrap() {
                match frame {
                    Frame::Header {
                        body_size,
                        properties,
                        ..
                    } => {
                        header_size = Some(body_size);
                        assert_eq!(*properties.delivery_mode(), Some(2));
                    }
                    Frame::Body { payload, .. } => body.extend_from_slice(&payload),
                    Frame::Method { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(header_size, Some(size as u64));
            assert_eq!(body.len(), size);
            if size >= 8 {
                assert_eq!(u64::from_be_bytes(body[..8].try_into().unwrap()), 42);
            }
        }
    }
}

//! Consumers: each has its own connection. Every read drains whatever the
//! socket holds, all complete frames in it are parsed in one pass, and acks
//! (multiple=true) for the batch go out in one write.
//!
//! Two parsers: `codec` runs every frame through the project's
//! `FrameDecoder`; `fast` reads basic.deliver, content headers and bodies
//! straight from the frame envelope (the fields the tool needs are at fixed
//! offsets) and hands anything else to the `FrameDecoder`.

use crate::stats::{now_nanos, Counters, Histogram};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::FieldTable;
use amqp_perf::client::{deliver_tag, send_close, AmqpUri, Conn, ReadSide};
use anyhow::{bail, Result};
use broker::protocol::{encode, Frame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use bytes::{Buf, BytesMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Parser {
    Fast,
    Codec,
}

#[derive(Clone, Debug)]
pub struct ConsumeSpec {
    pub queue: String,
    pub autoack: bool,
    pub prefetch: u16,
    /// Ack every N messages with multiple=true; 0 = once per read batch.
    pub multi_ack: u64,
    pub parser: Parser,
    /// basic.consume arguments (e.g. `x-stream-offset` for a stream).
    pub arguments: FieldTable,
}

/// Per-connection parse state: the message being received.
#[derive(Default)]
struct State {
    /// Body bytes still expected for the current message.
    remaining: u64,
    /// Whether the next body frame is the message's first.
    first_body: bool,
    in_message: bool,
    last_tag: u64,
    /// Messages completed in the current batch and their latest tag.
    done: u64,
    /// Delivery tags to ack one by one (multi_ack == 1).
    single_tags: Vec<u64>,
    now: u64,
    measuring: bool,
}

impl State {
    fn deliver(&mut self, tag: u64) {
        self.last_tag = tag;
        self.in_message = true;
        self.first_body = true;
        self.remaining = 0;
    }

    fn header(&mut self, body_size: u64) {
        self.remaining = body_size;
        if body_size == 0 {
            self.complete();
        }
    }

    fn body(&mut self, payload: &[u8], hist: &mut Histogram) {
        if self.first_body && self.measuring && payload.len() >= 8 && self.remaining >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&payload[..8]);
            let sent = u64::from_be_bytes(ts);
            hist.record(self.now.saturating_sub(sent));
        }
        self.first_body = false;
        self.remaining = self.remaining.saturating_sub(payload.len() as u64);
        if self.remaining == 0 {
            self.complete();
        }
    }

    fn complete(&mut self) {
        if self.in_message {
            self.in_message = false;
            self.done += 1;
        }
    }
}

pub async fn run(
    uri: AmqpUri,
    spec: ConsumeSpec,
    id: usize,
    counters: Arc<Counters>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<Histogram> {
    let mut conn = Conn::connect(&uri, &format!("amqp-perf consumer {id}")).await?;
    if !spec.autoack && spec.prefetch > 0 {
        conn.qos(spec.prefetch).await?;
    }
    conn.consume(
        &spec.queue,
        &format!("amqp-perf-{id}"),
        spec.autoack,
        spec.arguments.clone(),
    )
    .await?;
    let _ = ready.send(()).await;
    drop(ready);
    let (mut read, mut write, _) = conn.into_split();
    let mut hist = Histogram::default();
    let mut st = State::default();
    let multi_ack = match (spec.multi_ack, spec.prefetch) {
        (n, p) if p > 0 && n > p as u64 => p as u64,
        (n, _) => n,
    };
    let mut unacked: u64 = 0;
    let mut ack_buf = BytesMut::with_capacity(4096);

    let result: Result<()> = async {
        loop {
            st.measuring = counters.measuring.load(Ordering::Relaxed);
            if st.measuring {
                st.now = now_nanos();
            }
            match spec.parser {
                Parser::Fast => parse_fast(&mut read, &mut st, &mut hist, multi_ack == 1)?,
                Parser::Codec => parse_codec(&mut read, &mut st, &mut hist, multi_ack == 1)?,
            }
            if st.done > 0 {
                counters.consumed.fetch_add(st.done, Ordering::Relaxed);
                if !spec.autoack {
                    unacked += st.done;
                    if multi_ack == 1 {
                        for tag in st.single_tags.drain(..) {
                            put_ack(&mut ack_buf, tag, false);
                        }
                        unacked = 0;
                    } else if multi_ack == 0 || unacked >= multi_ack {
                        // The last completed message's tag covers everything
                        // before it.
                        let tag = if st.in_message {
                            st.last_tag - 1
                        } else {
                            st.last_tag
                        };
                        put_ack(&mut ack_buf, tag, true);
                        unacked = 0;
                    }
                    if !ack_buf.is_empty() {
                        write.write_all(&ack_buf).await?;
                        ack_buf.clear();
                    }
                }
                st.done = 0;
            }
            tokio::select! {
                n = read.fill(256 * 1024) => if n? == 0 {
                    bail!("connection closed by broker");
                },
                _ = stop.changed() => return Ok(()),
            }
        }
    }
    .await;
    send_close(&mut write).await;
    // Wait briefly for close-ok so the broker sees an orderly close.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            while let Ok(Some(frame)) = read.decode() {
                if let Frame::Method { channel: 0, method } = frame {
                    if matches!(
                        *method,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                    ) {
                        return;
                    }
                }
            }
            match read.fill(256 * 1024).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    result.map(|_| hist)
}

fn put_ack(buf: &mut BytesMut, tag: u64, multiple: bool) {
    encode::method(
        buf,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        })),
    );
}

/// Methods other than basic.deliver: cancellation and closes end the run.
fn other_method(method: AMQPClass, ch: u16) -> Result<()> {
    match method {
        AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
            bail!("broker cancelled consumer {}", c.consumer_tag)
        }
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
            bail!(
                "broker closed channel {ch}: {} {}",
                c.reply_code,
                c.reply_text
            )
        }
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
            bail!(
                "broker closed the connection: {} {}",
                c.reply_code,
                c.reply_text
            )
        }
        _ => Ok(()),
    }
}

fn parse_codec(
    read: &mut ReadSide,
    st: &mut State,
    hist: &mut Histogram,
    keep_tags: bool,
) -> Result<()> {
    while let Some(frame) = read.decode()? {
        match frame {
            Frame::Method {
                channel: ch,
                method,
            } => match *method {
                AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                    st.deliver(d.delivery_tag);
                    if keep_tags {
                        st.single_tags.push(d.delivery_tag);
                    }
                }
                m => other_method(m, ch)?,
            },
            Frame::Header { body_size, .. } => st.header(body_size),
            Frame::Body { payload, .. } => st.body(&payload, hist),
            Frame::Heartbeat { .. } => {}
        }
    }
    Ok(())
}

fn parse_fast(
    read: &mut ReadSide,
    st: &mut State,
    hist: &mut Histogram,
    keep_tags: bool,
) -> Result<()> {
    loop {
        let Some((kind, size)) = read.next_frame() else {
            return Ok(());
        };
        let payload = &read.buf[7..7 + size];
        let delivered = if kind == FRAME_METHOD {
            deliver_tag(payload)?
        } else {
            None
        };
        match kind {
            FRAME_METHOD if delivered.is_some() => {
                let tag = delivered.unwrap_or_default();
                st.deliver(tag);
                if keep_tags {
                    st.single_tags.push(tag);
                }
            }
            FRAME_HEADER if size >= 12 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload[4..12]);
                st.header(u64::from_be_bytes(b));
            }
            FRAME_BODY => st.body(payload, hist),
            FRAME_HEARTBEAT => {}
            _ => {
                // Anything else goes through the project's decoder.
                if let Some(Frame::Method {
                    channel: ch,
                    method,
                }) = read.decode()?
                {
                    other_method(*method, ch)?;
                }
                continue;
            }
        }
        read.buf.advance(8 + size);
    }
}

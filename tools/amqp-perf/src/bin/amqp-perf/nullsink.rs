//! A null broker for measuring the tool's own ceiling: it completes the
//! handshake, answers setup methods, swallows publishes (acking them in
//! confirm mode, one multiple ack per read), and floods each consumer with
//! pre-encoded deliveries as fast as the socket (and the consumer's
//! prefetch) allows. There are no queues: publishers and consumers are
//! measured independently.

use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use anyhow::{bail, Result};
use broker::protocol::{encode, Frame, FrameDecoder, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRAME_MAX: u32 = 131_072;

/// Serves on 127.0.0.1:`port` for `secs` seconds; deliveries carry `size`
/// byte bodies.
pub async fn serve(port: u16, size: usize, secs: f64) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("null sink listening on 127.0.0.1:{port} for {secs} s");
    let deadline = tokio::time::sleep(Duration::from_secs_f64(secs));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(async move {
                    let _ = handle(stream, size).await;
                });
            }
            _ = &mut deadline => return Ok(()),
        }
    }
}

struct Consumer {
    no_ack: bool,
    prefetch: u64,
    next_tag: u64,
    acked_upto: u64,
    template: Vec<u8>,
    tag_offset: usize,
    ts_offset: Option<usize>,
}

impl Consumer {
    fn unacked(&self) -> u64 {
        (self.next_tag - 1).saturating_sub(self.acked_upto)
    }
}

async fn handle(stream: TcpStream, size: usize) -> Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(256 * 1024);
    while rbuf.len() < 8 {
        if rd.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
    }
    rbuf.advance(8);
    let mut out = BytesMut::with_capacity(256 * 1024);
    let mut wpos = 0;
    encode::method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::default(),
            mechanisms: LongString::from("PLAIN"),
            locales: LongString::from("en_US"),
        })),
    );
    let decoder = FrameDecoder::new(FRAME_MAX);
    let mut prefetch: u64 = 0;
    let mut confirm_channel: Option<u16> = None;
    let mut published: u64 = 0;
    let mut confirmed: u64 = 0;
    let mut remaining: u64 = 0;
    let mut in_publish = false;
    let mut consumer: Option<Consumer> = None;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();

    loop {
        // Parse every complete frame.
        loop {
            if rbuf.len() < 7 {
                break;
            }
            let kind = rbuf[0];
            let len = u32::from_be_bytes([rbuf[3], rbuf[4], rbuf[5], rbuf[6]]) as usize;
            if rbuf.len() < len + 8 {
                rbuf.reserve(len + 8);
                break;
            }
            let payload = &rbuf[7..7 + len];
            let mut completed = false;
            match kind {
                FRAME_METHOD if len >= 4 && payload[..4] == [0, 60, 0, 40] => {
                    in_publish = true;
                }
                FRAME_HEADER if len >= 12 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&payload[4..12]);
                    remaining = u64::from_be_bytes(b);
                    completed = remaining == 0;
                }
                FRAME_BODY => {
                    remaining = remaining.saturating_sub(len as u64);
                    completed = remaining == 0;
                }
                FRAME_METHOD => {
                    let Some(Frame::Method {
                        channel: ch,
                        method,
                    }) = decoder
                        .decode(&mut rbuf)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                    else {
                        bail!("undecodable method frame");
                    };
                    let reply = match *method {
                        AMQPClass::Connection(connection::AMQPMethod::StartOk(_)) => Some(
                            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                                channel_max: 2047,
                                frame_max: FRAME_MAX,
                                heartbeat: 0,
                            })),
                        ),
                        AMQPClass::Connection(connection::AMQPMethod::TuneOk(_)) => None,
                        AMQPClass::Connection(connection::AMQPMethod::Open(_)) => {
                            Some(AMQPClass::Connection(connection::AMQPMethod::OpenOk(
                                connection::OpenOk {},
                            )))
                        }
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                            encode::method(
                                &mut out,
                                0,
                                &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                    connection::CloseOk {},
                                )),
                            );
                            wr.write_all(&out[wpos..]).await?;
                            return Ok(());
                        }
                        AMQPClass::Channel(channel::AMQPMethod::Open(_)) => Some(
                            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                        ),
                        AMQPClass::Channel(channel::AMQPMethod::Close(_)) => Some(
                            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        ),
                        AMQPClass::Exchange(exchange::AMQPMethod::Declare(_)) => {
                            Some(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                                exchange::DeclareOk {},
                            )))
                        }
                        AMQPClass::Exchange(exchange::AMQPMethod::Delete(_)) => {
                            Some(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                                exchange::DeleteOk {},
                            )))
                        }
                        AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => Some(AMQPClass::Queue(
                            queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                                queue: d.queue,
                                message_count: 0,
                                consumer_count: 0,
                            }),
                        )),
                        AMQPClass::Queue(queue::AMQPMethod::Bind(_)) => Some(AMQPClass::Queue(
                            queue::AMQPMethod::BindOk(queue::BindOk {}),
                        )),
                        AMQPClass::Queue(queue::AMQPMethod::Purge(_)) => Some(AMQPClass::Queue(
                            queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count: 0 }),
                        )),
                        AMQPClass::Queue(queue::AMQPMethod::Delete(_)) => Some(AMQPClass::Queue(
                            queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count: 0 }),
                        )),
                        AMQPClass::Confirm(confirm::AMQPMethod::Select(_)) => {
                            confirm_channel = Some(ch);
                            Some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                                confirm::SelectOk {},
                            )))
                        }
                        AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                            prefetch = q.prefetch_count as u64;
                            Some(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
                        }
                        AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => {
                            let tag = if c.consumer_tag.as_str().is_empty() {
                                "null-sink".to_string()
                            } else {
                                c.consumer_tag.as_str().to_string()
                            };
                            let mut t = BytesMut::new();
                            encode::deliver(&mut t, ch, &tag, 0, false, "", c.queue.as_str());
                            let deliver_len = t.len();
                            encode::content(&mut t, ch, &[0, 0], &body, FRAME_MAX);
                            consumer = Some(Consumer {
                                no_ack: c.no_ack,
                                prefetch,
                                next_tag: 1,
                                acked_upto: 0,
                                tag_offset: 7 + 4 + 1 + tag.len(),
                                ts_offset: (size >= 8).then_some(deliver_len + 22 + 7),
                                template: t.to_vec(),
                            });
                            Some(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                                basic::ConsumeOk {
                                    consumer_tag: tag.as_str().into(),
                                },
                            )))
                        }
                        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                            if let Some(c) = consumer.as_mut() {
                                if a.multiple {
                                    c.acked_upto = c.acked_upto.max(a.delivery_tag);
                                } else {
                                    c.acked_upto += 1;
                                }
                            }
                            None
                        }
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                            consumer = None;
                            Some(AMQPClass::Basic(basic::AMQPMethod::CancelOk(
                                basic::CancelOk {
                                    consumer_tag: c.consumer_tag,
                                },
                            )))
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        encode::method(&mut out, ch, &reply);
                    }
                    continue;
                }
                _ => {}
            }
            if completed && in_publish {
                in_publish = false;
                published += 1;
            }
            rbuf.advance(len + 8);
        }
        if let Some(ch) = confirm_channel {
            if published > confirmed {
                confirmed = published;
                encode::method(
                    &mut out,
                    ch,
                    &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: confirmed,
                        multiple: true,
                    })),
                );
            }
        }
        // Top up deliveries.
        if let Some(c) = consumer.as_mut() {
            if out.len() - wpos < 64 * 1024 {
                let credit = if c.no_ack || c.prefetch == 0 {
                    u64::MAX
                } else {
                    c.prefetch.saturating_sub(c.unacked())
                };
                let n = credit.min((128 * 1024 / c.template.len()).clamp(1, 4096) as u64);
                let ts = crate::stats::now_nanos().to_be_bytes();
                for _ in 0..n {
                    let at = out.len();
                    out.extend_from_slice(&c.template);
                    out[at + c.tag_offset..at + c.tag_offset + 8]
                        .copy_from_slice(&c.next_tag.to_be_bytes());
                    if let Some(off) = c.ts_offset {
                        out[at + off..at + off + 8].copy_from_slice(&ts);
                    }
                    c.next_tag += 1;
                }
            }
        }
        if rbuf.capacity() - rbuf.len() < 64 * 1024 {
            rbuf.reserve(256 * 1024);
        }
        tokio::select! {
            n = rd.read_buf(&mut rbuf) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            w = wr.write(&out[wpos..]), if wpos < out.len() => {
                wpos += w?;
                if wpos == out.len() {
                    out.clear();
                    wpos = 0;
                }
            }
        }
    }
}

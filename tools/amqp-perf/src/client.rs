//! A minimal AMQP 0-9-1 client for the load generator: the handshake, a few
//! synchronous methods for setup, then the stream is split for the hot path.
//!
//! Frames are written with the project's own encoder
//! (`broker::protocol::encode`) and read with its `FrameDecoder`.

use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use anyhow::{anyhow, bail, Context, Result};
use broker::protocol::{encode, Frame, FrameDecoder, PROTOCOL_HEADER};
use bytes::BytesMut;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The largest frame we ask for (RabbitMQ's default).
const FRAME_MAX: u32 = 131_072;

/// Parsed `amqp://user:pass@host:port/vhost`.
#[derive(Clone, Debug)]
pub struct AmqpUri {
    pub user: String,
    pub pass: String,
    pub addr: SocketAddr,
    pub vhost: String,
}

impl AmqpUri {
    pub fn parse(uri: &str) -> Result<AmqpUri> {
        let rest = uri
            .strip_prefix("amqp://")
            .ok_or_else(|| anyhow!("only amqp:// URIs are supported: {uri}"))?;
        let (authority, vhost) = match rest.split_once('/') {
            Some((a, v)) => (a, Some(percent_decode(v)?)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, pass) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (percent_decode(user)?, percent_decode(pass)?),
                None => (percent_decode(u)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let hostport = if hostport.is_empty() {
            "127.0.0.1"
        } else {
            hostport
        };
        let with_port = if hostport.starts_with('[') {
            if hostport.contains("]:") {
                hostport.to_string()
            } else {
                format!("{hostport}:5672")
            }
        } else if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:5672")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port} resolves to nothing"))?;
        Ok(AmqpUri {
            user,
            pass,
            addr,
            vhost: vhost.unwrap_or_else(|| "/".to_string()),
        })
    }

    pub fn is_loopback(&self) -> bool {
        match self.addr.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => ip.is_loopback(),
        }
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("bad percent escape in {s}"))?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("bad escape in {s}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// A connection before it is split: used for the handshake and setup.
pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: FrameDecoder,
    pub frame_max: u32,
}

impl Conn {
    /// Connects and completes the handshake, then opens channel 1.
    pub async fn connect(uri: &AmqpUri, name: &str) -> Result<Conn> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(uri.addr))
            .await
            .map_err(|_| anyhow!("connect to {} timed out", uri.addr))?
            .with_context(|| format!("connect to {}", uri.addr))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(4 * 1024),
            decoder: FrameDecoder::new(FRAME_MAX),
            frame_max: FRAME_MAX,
        };
        tokio::time::timeout(Duration::from_secs(30), conn.handshake(uri, name))
            .await
            .map_err(|_| anyhow!("handshake with {} timed out", uri.addr))??;
        conn.open_channel(1).await?;
        Ok(conn)
    }

    async fn handshake(&mut self, uri: &AmqpUri, name: &str) -> Result<()> {
        self.stream.write_all(PROTOCOL_HEADER).await?;
        match self.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
            other => bail!("expected connection.start, got {other:?}"),
        }
        let mut capabilities = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            capabilities.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("product".into(), AMQPValue::LongString("amqp-perf".into()));
        props.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let response = format!("\0{}\0{}", uri.user, uri.pass);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(response.as_str()),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match self.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => bail!("expected connection.tune, got {other:?}"),
        };
        let frame_max = match tune.frame_max {
            0 => FRAME_MAX,
            n => n.min(FRAME_MAX),
        };
        self.frame_max = frame_max;
        self.decoder.set_frame_max(frame_max);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: if tune.channel_max == 0 {
                    2047
                } else {
                    tune.channel_max
                },
                frame_max,
                // No heartbeats: runs are short and the hot loops stay simple.
                heartbeat: 0,
            })),
        )
        .await?;
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: ShortString::from(uri.vhost.as_str()),
            })),
        )
        .await?;
        match self.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(()),
            other => bail!("expected connection.open-ok, got {other:?}"),
        }
    }

    pub async fn send(&mut self, channel: u16, method: AMQPClass) -> Result<()> {
        encode::method(&mut self.wbuf, channel, &method);
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.rbuf)
                .map_err(|e| anyhow!("bad frame from broker: {e}"))?
            {
                return Ok(frame);
            }
            self.rbuf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed by broker");
            }
        }
    }

    /// The next method on `channel`; a close from the broker is an error.
    async fn next_method(&mut self, channel: u16) -> Result<AMQPClass> {
        loop {
            match self.next_frame().await? {
                Frame::Method {
                    channel: ch,
                    method,
                } => match *method {
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                        let _ = self
                            .send(
                                0,
                                AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                    connection::CloseOk {},
                                )),
                            )
                            .await;
                        bail!(
                            "broker closed the connection: {} {}",
                            c.reply_code,
                            c.reply_text
                        );
                    }
                    AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                        let _ = self
                            .send(
                                ch,
                                AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                                    channel::CloseOk {},
                                )),
                            )
                            .await;
                        bail!(
                            "broker closed channel {ch}: {} {}",
                            c.reply_code,
                            c.reply_text
                        );
                    }
                    m if ch == channel => return Ok(m),
                    _ => {}
                },
                _ => continue,
            }
        }
    }

    /// Sends a method and returns the broker's reply on the same channel.
    pub async fn rpc(&mut self, channel: u16, method: AMQPClass) -> Result<AMQPClass> {
        self.send(channel, method).await?;
        self.next_method(channel).await
    }

    pub async fn open_channel(&mut self, channel_id: u16) -> Result<()> {
        match self
            .rpc(
                channel_id,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            )
            .await?
        {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Ok(()),
            other => bail!("expected channel.open-ok, got {other:?}"),
        }
    }

    pub async fn exchange_declare(&mut self, name: &str, kind: &str, durable: bool) -> Result<()> {
        self.exchange_declare_with(name, kind, durable, FieldTable::default())
            .await
    }

    /// Declares an exchange with arguments (e.g. `x-partitions`).
    pub async fn exchange_declare_with(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
        arguments: FieldTable,
    ) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.into(),
                kind: kind.into(),
                passive: false,
                durable,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments,
            })),
        )
        .await
        .map(|_| ())
    }

    pub async fn exchange_delete(&mut self, name: &str) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: name.into(),
                if_unused: false,
                nowait: false,
            })),
        )
        .await
        .map(|_| ())
    }

    /// Declares a queue; returns its message count.
    pub async fn queue_declare(&mut self, name: &str, durable: bool, passive: bool) -> Result<u32> {
        self.queue_declare_with(name, durable, passive, FieldTable::default())
            .await
    }

    /// Declares a queue with arguments (e.g. `x-queue-type`); returns its
    /// message count.
    pub async fn queue_declare_with(
        &mut self,
        name: &str,
        durable: bool,
        passive: bool,
        arguments: FieldTable,
    ) -> Result<u32> {
        match self
            .rpc(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: name.into(),
                    passive,
                    durable,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments,
                })),
            )
            .await?
        {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    pub async fn queue_bind(&mut self, queue_name: &str, exchange: &str, key: &str) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue_name.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await
        .map(|_| ())
    }

    pub async fn queue_purge(&mut self, name: &str) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: name.into(),
                nowait: false,
            })),
        )
        .await
        .map(|_| ())
    }

    pub async fn queue_delete(&mut self, name: &str) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name.into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
        )
        .await
        .map(|_| ())
    }

    pub async fn confirm_select(&mut self) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await
        .map(|_| ())
    }

    pub async fn qos(&mut self, prefetch: u16) -> Result<()> {
        self.rpc(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
        )
        .await
        .map(|_| ())
    }

    /// basic.consume with arguments (e.g. `x-stream-offset`).
    pub async fn consume(
        &mut self,
        queue_name: &str,
        tag: &str,
        no_ack: bool,
        arguments: FieldTable,
    ) -> Result<()> {
        match self
            .rpc(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: queue_name.into(),
                    consumer_tag: tag.into(),
                    no_local: false,
                    no_ack,
                    exclusive: false,
                    nowait: false,
                    arguments,
                })),
            )
            .await?
        {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => Ok(()),
            other => bail!("expected basic.consume-ok, got {other:?}"),
        }
    }

    /// Closes the connection politely (bounded wait for close-ok).
    pub async fn close(mut self) {
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }));
        if self.send(0, close).await.is_err() {
            return;
        }
        let wait = async {
            loop {
                match self.next_frame().await {
                    Ok(Frame::Method { channel: 0, method })
                        if matches!(
                            *method,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                        ) =>
                    {
                        return
                    }
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
    }

    /// Splits into a read side (keeping any bytes already buffered) and a
    /// write side.
    pub fn into_split(self) -> (ReadSide, OwnedWriteHalf, u32) {
        let (read, write) = self.stream.into_split();
        (
            ReadSide {
                read,
                buf: self.rbuf,
                decoder: self.decoder,
            },
            write,
            self.frame_max,
        )
    }
}

impl ReadSide {
    /// Joins the halves again, e.g. to drop the socket abruptly.
    pub fn reunite(self, write: OwnedWriteHalf) -> Result<TcpStream> {
        self.read
            .reunite(write)
            .map_err(|e| anyhow!("reunite: {e}"))
    }
}

/// The read half of a split connection with its buffer and decoder.
pub struct ReadSide {
    pub read: OwnedReadHalf,
    pub buf: BytesMut,
    pub decoder: FrameDecoder,
}

/// The delivery tag of a method frame's payload if it is basic.deliver
/// (consumer-tag shortstr, then the tag); a short one is an error.
pub fn deliver_tag(payload: &[u8]) -> Result<Option<u64>> {
    if payload.len() < 5 || payload[..4] != [0, 60, 0, 60] {
        return Ok(None);
    }
    let at = 5 + payload[4] as usize;
    match payload.get(at..at + 8) {
        Some(t) => Ok(Some(u64::from_be_bytes(t.try_into()?))),
        None => anyhow::bail!("short basic.deliver frame"),
    }
}

impl ReadSide {
    /// The type and payload size of the next complete frame in the buffer
    /// (payload at `buf[7..7 + size]`); `None` when it is not all there yet,
    /// after making room for it.
    pub fn next_frame(&mut self) -> Option<(u8, usize)> {
        if self.buf.len() < 7 {
            return None;
        }
        let size =
            u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize;
        if self.buf.len() < 8 + size {
            if self.buf.capacity() < 8 + size {
                self.buf.reserve(8 + size - self.buf.len());
            }
            return None;
        }
        Some((self.buf[0], size))
    }

    /// Reads more bytes (at least `chunk` of room is made); 0 means closed.
    pub async fn fill(&mut self, chunk: usize) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < chunk / 4 {
            self.buf.reserve(chunk);
        }
        Ok(self.read.read_buf(&mut self.buf).await?)
    }

    pub fn decode(&mut self) -> Result<Option<Frame>> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(|e| anyhow!("bad frame from broker: {e}"))
    }
}

/// Writes a connection.close on a write half (used at the end of the hot
/// path, when the read half belongs to another task).
pub async fn send_close(write: &mut OwnedWriteHalf) {
    let mut buf = BytesMut::new();
    encode::method(
        &mut buf,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    let _ = write.write_all(&buf).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        let u = AmqpUri::parse("amqp://a:b@127.0.0.1:5680/%2f").unwrap();
        assert_eq!(u.user, "a");
        assert_eq!(u.pass, "b");
        assert_eq!(u.addr.port(), 5680);
        assert_eq!(u.vhost, "/");
        let u = AmqpUri::parse("amqp://127.0.0.1").unwrap();
        assert_eq!(u.vhost, "/");
        assert_eq!(u.addr.port(), 5672);
        let u = AmqpUri::parse("amqp://guest:guest@localhost:5673/vh").unwrap();
        assert_eq!(u.vhost, "vh");
        assert!(u.is_loopback());
    }
}

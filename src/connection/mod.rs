//! One task per client connection: handshake, then frames are read in
//! batches and dispatched to channel state machines; everything sent goes
//! through the connection's single writer (`output`).

mod channel;
mod confirms;
mod delivery;
mod handshake;
pub mod limits;
mod output;
mod publish;
mod reader;

use crate::broker::queue::Queue;
use crate::broker::registry::{ConnectionInfo, TlsInfo};
use crate::broker::vhost::VHost;
use crate::broker::Broker;
use crate::protocol::text::short;
use crate::protocol::{AMQPClass, AmqpError, ErrorScope, Frame, PROTOCOL_HEADER};
use amq_protocol::protocol::{channel as channel_methods, connection};
use channel::Channel;
use delivery::ChannelDelivery;
use output::{Outbound, Output};
use reader::{ReadError, Reader};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What channels need from their connection.
pub struct ConnContext {
    pub id: u64,
    pub broker: Arc<Broker>,
    pub vhost: Arc<VHost>,
    pub user: String,
    pub output: Arc<Output>,
    /// Exclusive queues this connection declared: deleted when it closes.
    pub exclusive_queues: Vec<Arc<Queue>>,
    /// Told when another node answers a message this connection published
    /// and the broker forwarded there (its confirm waits for it).
    pub remote_answers: Arc<tokio::sync::Notify>,
    /// Some publish of this connection was forwarded to another node: it
    /// stops reading while the forwarders are saturated.
    pub forwards: bool,
}

struct Connection {
    ctx: ConnContext,
    peer: SocketAddr,
    /// Looked up for every frame: FxHash (one multiply for a u16) instead
    /// of SipHash; channel numbers are bounded by channel_max.
    channels: HashMap<u16, Channel, rustc_hash::FxBuildHasher>,
    /// Channels we closed, waiting for the client's close-ok.
    closing: HashSet<u16>,
    channel_max: u16,
    cancel_notify: bool,
    blocked_notify: bool,
    /// Whether this connection ever published: only publishers are
    /// blocked by resource alarms.
    publisher: bool,
    info: Arc<ConnectionInfo>,
    /// This connection's slot under the connection limits; given back as
    /// soon as the client has closed.
    admitted: Option<limits::Admitted>,
    /// The client sent connection.close and got close-ok.
    closed_by_client: bool,
}

enum Next {
    Continue,
    /// The client closed the connection (close-ok sent).
    Closed,
}

/// Serves one plain-TCP client until it disconnects or the broker shuts
/// down. The socket's own halves are used as they are (no lock between the
/// reader and the writer).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    limits: Arc<limits::ConnectionLimits>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let (read_half, write_half) = stream.into_split();
    serve_halves(
        Box::new(read_half),
        write_half,
        peer,
        local,
        broker,
        limits,
        shutdown,
        None,
    )
    .await
}

/// Serves a client over any byte stream: TLS, or an in-memory pipe (the
/// fuzz target). `peer` decides, as for TCP, whether loopback-only users
/// may log in.
pub async fn serve_stream<S>(
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    limits: Arc<limits::ConnectionLimits>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    serve_halves(
        Box::new(read_half),
        write_half,
        peer,
        local,
        broker,
        limits,
        shutdown,
        None,
    )
    .await
}

/// Serves an AMQPS client whose TLS handshake is done; management shows
/// the session's protocol, cipher and client certificate.
pub async fn serve_tls_stream(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    limits: Arc<limits::ConnectionLimits>,
    shutdown: watch::Receiver<bool>,
) {
    let session = stream.get_ref().1;
    let tls = TlsInfo {
        protocol: session
            .protocol_version()
            .map(|v| match v {
                tokio_rustls::rustls::ProtocolVersion::TLSv1_3 => "tlsv1.3".to_string(),
                tokio_rustls::rustls::ProtocolVersion::TLSv1_2 => "tlsv1.2".to_string(),
                other => format!("{other:?}").to_lowercase(),
            })
            .unwrap_or_default(),
        cipher_suite: session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        peer_certificate: session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.to_vec()),
    };
    let (read_half, write_half) = tokio::io::split(stream);
    serve_halves(
        Box::new(read_half),
        write_half,
        peer,
        local,
        broker,
        limits,
        shutdown,
        Some(tls),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn serve_halves<W: AsyncWrite + Unpin + Send + 'static>(
    read_half: Box<dyn AsyncRead + Unpin + Send>,
    write_half: W,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    limits: Arc<limits::ConnectionLimits>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<TlsInfo>,
) {
    let config = broker.config.amqp.clone();
    let mut reader = Reader::new(read_half, config.frame_max);
    reader.idle_timeout = Some(Duration::from_secs(config.handshake_timeout_secs.max(1)));
    let output = Output::start(write_half, config.frame_max);

    match reader.protocol_header().await {
        Ok(header) if accepted_header(&header) => {}
        Ok(header) => {
            tracing::info!(%peer, ?header, "unsupported protocol header; answering with AMQP 0-9-1");
            output.send(Outbound::Raw(PROTOCOL_HEADER));
            output.send(Outbound::Close);
            return;
        }
        Err(_) => {
            output.send(Outbound::Close);
            return;
        }
    }

    let negotiated = match handshake::negotiate(&mut reader, &output, &broker, &limits, peer).await
    {
        Ok(n) => n,
        Err(handshake::HandshakeError::Drop) => {
            output.send(Outbound::Close);
            return;
        }
        Err(handshake::HandshakeError::Close(error)) => {
            tracing::warn!(%peer, %error, "handshake failed");
            send_connection_close(&output, &error);
            // Give the client a moment to read the close before the socket goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), reader.frame()).await;
            output.send(Outbound::Close);
            return;
        }
    };
    let Some(vhost) = broker.vhost(&negotiated.vhost) else {
        output.send(Outbound::Close);
        return;
    };
    reader.decoder.set_frame_max(negotiated.frame_max);
    output.set_frame_max(negotiated.frame_max);
    output.set_heartbeat(negotiated.heartbeat);
    reader.idle_timeout =
        (negotiated.heartbeat > 0).then(|| Duration::from_secs(negotiated.heartbeat as u64 * 2));
    let id = broker.next_connection_id();
    let info = Arc::new(ConnectionInfo::new(
        id,
        peer,
        local,
        negotiated.user.clone(),
        negotiated.vhost.clone(),
        negotiated.client_properties.clone(),
        negotiated.channel_max,
        negotiated.frame_max,
        negotiated.heartbeat,
    ));
    if let Some(tls) = tls {
        let _ = info.tls.set(tls);
    }
    broker.registry.add(info.clone());
    tracing::info!(%peer, id, user = negotiated.user, vhost = negotiated.vhost, "connection opened");

    let mut conn = Connection {
        ctx: ConnContext {
            id,
            broker: broker.clone(),
            vhost,
            user: negotiated.user,
            output,
            exclusive_queues: Vec::new(),
            remote_answers: Default::default(),
            forwards: false,
        },
        peer,
        channels: HashMap::default(),
        closing: HashSet::new(),
        channel_max: negotiated.channel_max,
        cancel_notify: negotiated.cancel_notify,
        blocked_notify: negotiated.blocked_notify,
        publisher: false,
        info: info.clone(),
        admitted: Some(negotiated.admitted),
        closed_by_client: false,
    };
    conn.run(&mut reader, &mut shutdown).await;
    conn.cleanup();
    broker.registry.remove(id);
    tracing::info!(%peer, id, "connection closed");
    if conn.closed_by_client {
        linger(&mut reader, &mut shutdown).await;
    }
    conn.ctx.output.send(Outbound::Close);
}

/// How long a closed connection's socket is kept open for the client to
/// read its close-ok and hang up: RabbitMQ's CLOSING_TIMEOUT.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(30);

/// After close-ok to the client's connection.close, the socket stays open
/// and whatever the client still sends is read and dropped, until it closes
/// its end (or the time limit, or shutdown). Closing at once would make a
/// client that is still writing (pipelined channel frames) get a reset
/// before it has read close-ok.
async fn linger(reader: &mut Reader, shutdown: &mut watch::Receiver<bool>) {
    reader.idle_timeout = None;
    let deadline = tokio::time::Instant::now() + CLOSING_TIMEOUT;
    let until_eof = async {
        loop {
            reader.buf.clear();
            if reader.fill().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout_at(deadline, until_eof) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

/// AMQP 0-9-1, and the older 0-9 header that RabbitMQ treats the same.
fn accepted_header(header: &[u8; 8]) -> bool {
    header == PROTOCOL_HEADER || header == b"AMQP\x01\x01\x00\x09"
}

fn send_connection_close(output: &Output, error: &AmqpError) {
    output.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: error.code,
            reply_text: short(error.text.as_str()),
            class_id: error.class_id,
            method_id: error.method_id,
        })),
    );
}

impl Connection {
    async fn run(&mut self, reader: &mut Reader, shutdown: &mut watch::Receiver<bool>) {
        // Confirms of persistent messages wait for the message log's sync.
        let mut synced = self.ctx.broker.store.as_ref().map(|s| s.log.synced());
        // Declare-oks and the like wait for the catalog's flush.
        let mut catalog = self.ctx.broker.store.as_ref().map(|s| s.catalog.flushed());
        let mut alarms = self.ctx.broker.alarms.subscribe();
        // Forwarding to other cluster nodes is backed up (flow control).
        let mut forwarding = self
            .ctx
            .broker
            .replication
            .forwarders()
            .map(|f| f.saturated());
        loop {
            // Handle every frame already buffered, then confirm in one go.
            loop {
                match reader.buffered_frame() {
                    Ok(Some(frame)) => match self.handle_frame(frame) {
                        Ok(Next::Continue) => {}
                        Ok(Next::Closed) => return,
                        Err(error) => return self.close_with(error, reader).await,
                    },
                    Ok(None) => break,
                    Err(ReadError::Protocol(error)) => return self.close_with(error, reader).await,
                    Err(_) => return,
                }
            }
            if self.publisher && alarms.borrow().is_some() {
                if let Err(error) = self
                    .wait_while_blocked(&mut alarms, &mut synced, &mut catalog, shutdown)
                    .await
                {
                    return self.close_with(error, reader).await;
                }
            }
            self.info
                .channels
                .store(self.channels.len(), std::sync::atomic::Ordering::Relaxed);
            let synced_now = synced.as_ref().map_or(u64::MAX, |s| *s.borrow());
            if let Err(error) = self.flush_confirms(synced_now) {
                return self.close_with(error, reader).await;
            }
            let waiting_for_log = self.channels.values().any(|c| c.waiting_for_log());
            let waiting_for_nodes = self.channels.values().any(|c| c.waiting_for_nodes());
            let remote_answers = self.ctx.remote_answers.clone();
            let waiting_for_catalog = self.channels.values().any(|c| c.waiting_for_catalog());
            let log_synced = changed(synced.as_mut());
            let catalog_flushed = changed(catalog.as_mut());
            let buffered = reader.buf.len();
            let info = self.info.clone();
            // While the client does not read what it is sent, its socket is
            // not read either (output.rs, back-pressure).
            let output = self.ctx.output.clone();
            let saturated = output.is_saturated();
            let publisher = self.publisher;
            let forwarding_full =
                self.ctx.forwards && forwarding.as_ref().is_some_and(|rx| *rx.borrow());
            tokio::select! {
                _ = log_synced, if waiting_for_log => {}
                _ = remote_answers.notified(), if waiting_for_nodes => {}
                _ = catalog_flushed, if waiting_for_catalog => {}
                // A publisher hears of an alarm at once (connection.blocked),
                // not only when it next sends something.
                _ = alarms.changed(), if publisher => {}
                _ = output.drained(), if saturated => {}
                _ = until_clear(forwarding.as_mut()), if forwarding_full => {}
                reason = info.close_requested() => {
                    let error = AmqpError::connection(crate::protocol::error::code::CONNECTION_FORCED, reason);
                    return self.close_with(error, reader).await;
                }
                read = reader.fill(), if !saturated && !forwarding_full => match read {
                    Ok(()) => {
                        let received = reader.buf.len().saturating_sub(buffered);
                        self.info.recv_bytes.fetch_add(received as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(ReadError::Timeout) => {
                        tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {}s",
                            reader.idle_timeout.map_or(0, |d| d.as_secs() / 2));
                        return;
                    }
                    Err(_) => return,
                },
                _ = shutdown.changed() => {
                    let error = AmqpError::connection(
                        crate::protocol::error::code::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    );
                    return self.close_with(error, reader).await;
                }
            }
        }
    }

    /// A resource alarm is raised: tell the client (if it understands
    /// connection.blocked) and stop reading its socket until the alarm
    /// clears. Confirms already due still go out.
    async fn wait_while_blocked(
        &mut self,
        alarms: &mut watch::Receiver<crate::broker::alarms::AlarmState>,
        synced: &mut Option<watch::Receiver<u64>>,
        catalog: &mut Option<watch::Receiver<u64>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), AmqpError> {
        let reason = alarms.borrow().unwrap_or("resource alarm");
        if self.blocked_notify {
            self.ctx.output.method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: reason.into(),
                })),
            );
        }
        tracing::info!(peer = %self.peer, reason, "publishing connection blocked");
        // What is due already goes out now: the sync that made it due may
        // be the one that woke us (a failed write raises the alarm).
        let now = synced.as_ref().map_or(u64::MAX, |s| *s.borrow());
        self.flush_confirms(now)?;
        let info = self.info.clone();
        loop {
            if alarms.borrow().is_none() {
                break;
            }
            let log_synced = changed(synced.as_mut());
            let catalog_flushed = changed(catalog.as_mut());
            tokio::select! {
                changed = alarms.changed() => if changed.is_err() { break },
                _ = log_synced => {
                    let now = synced.as_ref().map_or(u64::MAX, |s| *s.borrow());
                    self.flush_confirms(now)?;
                }
                _ = catalog_flushed => {
                    let now = synced.as_ref().map_or(u64::MAX, |s| *s.borrow());
                    self.flush_confirms(now)?;
                }
                reason = info.close_requested() => {
                    return Err(AmqpError::connection(crate::protocol::error::code::CONNECTION_FORCED, reason));
                }
                _ = shutdown.changed() => {
                    return Err(AmqpError::connection(
                        crate::protocol::error::code::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
            }
        }
        if self.blocked_notify {
            self.ctx.output.method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
        tracing::info!(peer = %self.peer, "publishing connection unblocked");
        Ok(())
    }

    /// Sends connection.close and waits briefly for close-ok.
    async fn close_with(&mut self, error: AmqpError, reader: &mut Reader) {
        tracing::warn!(peer = %self.peer, %error, "closing connection");
        send_connection_close(&self.ctx.output, &error);
        let wait_for_close_ok = async {
            loop {
                match reader.frame().await {
                    Ok(Frame::Method { channel: 0, method })
                        if matches!(
                            *method,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                        ) =>
                    {
                        return
                    }
                    Ok(_) => continue,
                    // The rest of the input cannot be framed: stop reading.
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), wait_for_close_ok).await;
    }

    /// Releases the channels and exclusive queues; the socket is closed by
    /// the caller (after `linger`, when the client started the close).
    fn cleanup(&mut self) {
        for (_, mut channel) in self.channels.drain() {
            channel.close(&mut self.ctx);
        }
        for queue in std::mem::take(&mut self.ctx.exclusive_queues) {
            self.ctx.vhost.remove_queue(&queue);
        }
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<Next, AmqpError> {
        let channel_id = frame.channel();
        match frame {
            Frame::Heartbeat { channel: 0 } => Ok(Next::Continue),
            Frame::Heartbeat { .. } => {
                Err(AmqpError::unexpected_frame("type 8, all octets = <<>>"))
            }
            Frame::Method { channel: 0, method } => self.connection_method(*method),
            Frame::Method { method, .. } => {
                if matches!(
                    *method,
                    AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(_))
                ) {
                    self.publisher = true;
                }
                self.channel_method(channel_id, *method)
            }
            Frame::Header {
                class_id,
                body_size,
                properties,
                raw_properties,
                ..
            } => {
                if channel_id == 0 || self.closing.contains(&channel_id) {
                    return self.content_on_unusable(channel_id);
                }
                let ctx = &mut self.ctx;
                let Some(channel) = self.channels.get_mut(&channel_id) else {
                    return Err(expected_open(0, 0));
                };
                let result =
                    channel.handle_header(ctx, class_id, body_size, properties, raw_properties);
                self.after_channel_result(channel_id, result)
            }
            Frame::Body { payload, .. } => {
                if channel_id == 0 || self.closing.contains(&channel_id) {
                    return self.content_on_unusable(channel_id);
                }
                let ctx = &mut self.ctx;
                let Some(channel) = self.channels.get_mut(&channel_id) else {
                    return Err(expected_open(0, 0));
                };
                let result = channel.handle_body(ctx, payload);
                self.after_channel_result(channel_id, result)
            }
        }
    }

    /// Content on channel 0 is an error; on a closing channel it is dropped.
    fn content_on_unusable(&self, channel_id: u16) -> Result<Next, AmqpError> {
        if channel_id == 0 {
            return Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ));
        }
        Ok(Next::Continue)
    }

    fn connection_method(&mut self, method: AMQPClass) -> Result<Next, AmqpError> {
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                tracing::debug!(peer = %self.peer, code = close.reply_code, text = %close.reply_text, "client closed connection");
                // The client may reconnect as soon as it has the close-ok.
                self.admitted = None;
                self.closed_by_client = true;
                self.ctx.output.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Ok(Next::Closed)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(Next::Closed),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.ctx.output.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(Next::Continue)
            }
            other => {
                let (class_id, method_id) = channel::method_ids(&other);
                Err(
                    AmqpError::channel_error("unexpected method in connection state running")
                        .on(class_id, method_id),
                )
            }
        }
    }

    fn channel_method(&mut self, channel_id: u16, method: AMQPClass) -> Result<Next, AmqpError> {
        let (class_id, method_id) = channel::method_ids(&method);
        if let AMQPClass::Connection(_) = method {
            return Err(AmqpError::command_invalid("unimplemented method").on(class_id, method_id));
        }
        if self.closing.contains(&channel_id) {
            // After we closed a channel, only its close-ok ends the close
            // handshake. A crossing channel.close (the client closed too,
            // before it read ours) gets its close-ok, but the channel stays
            // closing until the client's close-ok for ours arrives, as in
            // RabbitMQ; everything else is dropped.
            match method {
                AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(_)) => {
                    self.closing.remove(&channel_id);
                }
                AMQPClass::Channel(channel_methods::AMQPMethod::Close(_)) => {
                    self.send_channel_close_ok(channel_id);
                }
                _ => {}
            }
            return Ok(Next::Continue);
        }
        match method {
            AMQPClass::Channel(channel_methods::AMQPMethod::Open(_)) => {
                if self.channels.contains_key(&channel_id) {
                    return Err(AmqpError::channel_error("second 'channel.open' seen").on(20, 10));
                }
                // channel-max is the highest channel number allowed.
                if self.channel_max != 0 && channel_id > self.channel_max {
                    return Err(AmqpError::not_allowed(format!(
                        "channel number {channel_id} is above the negotiated channel_max ({})",
                        self.channel_max
                    ))
                    .on(20, 10));
                }
                let open = self.channels.len() + self.closing.len();
                if self.channel_max != 0 && open >= self.channel_max as usize {
                    return Err(AmqpError::not_allowed(format!(
                        "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                        self.channel_max
                    ))
                    .on(20, 10));
                }
                let stats = self.info.channel_opened(channel_id);
                let delivery = Arc::new(ChannelDelivery::new(
                    self.ctx.id,
                    channel_id,
                    self.ctx.output.clone(),
                    self.cancel_notify,
                    stats,
                ));
                self.channels
                    .insert(channel_id, Channel::new(channel_id, delivery));
                self.ctx.output.method(
                    channel_id,
                    AMQPClass::Channel(channel_methods::AMQPMethod::OpenOk(
                        channel_methods::OpenOk {},
                    )),
                );
                Ok(Next::Continue)
            }
            AMQPClass::Channel(channel_methods::AMQPMethod::Close(_)) => {
                let Some(mut channel) = self.channels.remove(&channel_id) else {
                    return Err(expected_open(class_id, method_id));
                };
                self.info.channel_closed(channel_id);
                // Closing anyway: a failed transaction needs no error.
                let _ = channel.flush_confirms(&self.ctx, self.synced_now());
                channel.close(&mut self.ctx);
                self.send_channel_close_ok(channel_id);
                Ok(Next::Continue)
            }
            AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(_))
                if self.channels.contains_key(&channel_id) =>
            {
                Ok(Next::Continue)
            }
            method => {
                let ctx = &mut self.ctx;
                let Some(channel) = self.channels.get_mut(&channel_id) else {
                    return Err(expected_open(class_id, method_id));
                };
                let result = match channel.handle_method(ctx, method) {
                    Ok(Some(reply)) => {
                        ctx.output.method(channel_id, reply);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                self.after_channel_result(channel_id, result)
            }
        }
    }

    /// Channel errors close just that channel; connection errors go up.
    fn after_channel_result(
        &mut self,
        channel_id: u16,
        result: Result<(), AmqpError>,
    ) -> Result<Next, AmqpError> {
        match result {
            Ok(()) => Ok(Next::Continue),
            Err(error) if error.scope == ErrorScope::Channel => {
                tracing::warn!(peer = %self.peer, channel = channel_id, %error, "closing channel");
                if let Some(mut channel) = self.channels.remove(&channel_id) {
                    self.info.channel_closed(channel_id);
                    channel.withdraw_failed_publish();
                    let _ = channel.flush_confirms(&self.ctx, self.synced_now());
                    channel.close(&mut self.ctx);
                }
                self.closing.insert(channel_id);
                self.ctx.output.method(
                    channel_id,
                    AMQPClass::Channel(channel_methods::AMQPMethod::Close(
                        channel_methods::Close {
                            reply_code: error.code,
                            reply_text: short(error.text.as_str()),
                            class_id: error.class_id,
                            method_id: error.method_id,
                        },
                    )),
                );
                Ok(Next::Continue)
            }
            Err(error) => Err(error),
        }
    }

    /// Sends every channel's due confirms, commit-oks and the replies
    /// that waited for the catalog's flush; a channel whose transaction
    /// the log could not store is closed with the error.
    fn flush_confirms(&mut self, synced: u64) -> Result<(), AmqpError> {
        let mut failed = Vec::new();
        let catalog = self
            .ctx
            .broker
            .store
            .as_ref()
            .map_or(u64::MAX, |s| s.catalog.flushed_now());
        for (&id, channel) in self.channels.iter_mut() {
            channel.flush_catalog_replies(&self.ctx, catalog);
            if let Err(error) = channel.flush_confirms(&self.ctx, synced) {
                failed.push((id, error));
            }
        }
        for (id, error) in failed {
            self.after_channel_result(id, Err(error))?;
        }
        Ok(())
    }

    fn synced_now(&self) -> u64 {
        self.ctx
            .broker
            .store
            .as_ref()
            .map_or(u64::MAX, |s| *s.log.synced().borrow())
    }

    fn send_channel_close_ok(&self, channel_id: u16) {
        self.ctx.output.method(
            channel_id,
            AMQPClass::Channel(channel_methods::AMQPMethod::CloseOk(
                channel_methods::CloseOk {},
            )),
        );
    }
}

fn expected_open(class_id: u16, method_id: u16) -> AmqpError {
    AmqpError::channel_error("expected 'channel.open'").on(class_id, method_id)
}

/// Resolves once the forwarders are no longer saturated (never without
/// them).
async fn until_clear(rx: Option<&mut watch::Receiver<bool>>) {
    let cleared = match rx {
        Some(rx) => rx.wait_for(|saturated| !*saturated).await.is_ok(),
        None => false,
    };
    if !cleared {
        // Gone (the broker stops): wait for something else.
        std::future::pending::<()>().await;
    }
}

/// Resolves when `rx` changes; never, without one or once its sender is
/// gone (the broker stops): the caller waits for something else rather
/// than spin.
async fn changed(rx: Option<&mut watch::Receiver<u64>>) {
    let changed = match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

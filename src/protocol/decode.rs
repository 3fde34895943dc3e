//! Incoming frames: the envelope is read here so that the size is checked
//! before a frame is buffered, and bodies are sliced out of the read buffer
//! (`split_to().freeze()`) instead of being copied.

use super::error::{erlang_binary, AmqpError};
use super::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::basic::{AMQPMethod as BasicMethod, Publish};
use amq_protocol::protocol::{parse_class, AMQPClass, BasicProperties};
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::ShortString;
use bytes::{Buf, Bytes, BytesMut};
use std::sync::Arc;

#[derive(Debug)]
pub enum Frame {
    Method {
        channel: u16,
        method: Box<AMQPClass>,
    },
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Arc<BasicProperties>,
        /// The encoded property flags and list as received: re-sent unchanged
        /// on delivery so that properties are not encoded again per consumer.
        raw_properties: Bytes,
    },
    Body {
        channel: u16,
        payload: Bytes,
    },
    Heartbeat {
        channel: u16,
    },
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => *channel,
        }
    }
}

/// Decodes frames from a read buffer, enforcing the negotiated frame_max.
pub struct FrameDecoder {
    /// Largest payload accepted: frame_max minus the 8 bytes of envelope.
    max_payload: usize,
}

const HEADER_LEN: usize = 7;

impl FrameDecoder {
    pub fn new(frame_max: u32) -> Self {
        let mut decoder = FrameDecoder { max_payload: 0 };
        decoder.set_frame_max(frame_max);
        decoder
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.max_payload = (frame_max as usize).saturating_sub(super::FRAME_OVERHEAD);
    }

    /// Takes one whole frame off the front of `buf`, or returns `None` when
    /// more bytes are needed. Errors are connection errors (501, 503).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, AmqpError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let frame_type = buf[0];
        let channel = u16::from_be_bytes([buf[1], buf[2]]);
        let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
        if size > self.max_payload {
            return Err(AmqpError::frame_error(format!(
                "type {frame_type}, all octets = <<>>: {{frame_too_large,{size},{}}}",
                self.max_payload
            )));
        }
        let total = HEADER_LEN + size + 1;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        // Only body frames and header properties outlive the read buffer:
        // they become slices of it. Everything else is parsed in place.
        let payload = &buf[HEADER_LEN..HEADER_LEN + size];
        let end = buf[total - 1];
        let result = if end != FRAME_END {
            Err(AmqpError::frame_error(format!(
                "type {frame_type}, all octets = {}: {{invalid_frame_end_marker,{end}}}",
                erlang_binary(payload),
            )))
        } else {
            match frame_type {
                FRAME_METHOD => decode_method(channel, payload),
                FRAME_HEADER => match decode_header(payload) {
                    Ok((class_id, body_size, properties)) => {
                        buf.advance(HEADER_LEN + HEADER_FIXED);
                        let raw_properties = buf.split_to(size - HEADER_FIXED).freeze();
                        buf.advance(1);
                        return Ok(Some(Frame::Header {
                            channel,
                            class_id,
                            body_size,
                            properties,
                            raw_properties,
                        }));
                    }
                    Err(error) => Err(error),
                },
                FRAME_BODY => {
                    buf.advance(HEADER_LEN);
                    let payload = buf.split_to(size).freeze();
                    buf.advance(1);
                    return Ok(Some(Frame::Body { channel, payload }));
                }
                FRAME_HEARTBEAT => Ok(Frame::Heartbeat { channel }),
                other => Err(AmqpError::frame_error(format!(
                    "type {other}, all octets = {}: unknown_frame",
                    erlang_binary(payload)
                ))),
            }
        };
        buf.advance(total);
        result.map(Some)
    }
}

fn decode_method(channel: u16, payload: &[u8]) -> Result<Frame, AmqpError> {
    // basic.publish is most of what a busy connection reads: decoded by
    // hand. Anything it does not accept goes the general way below, which
    // then produces the error.
    if payload.starts_with(&[0, 60, 0, 40]) {
        if let Some(publish) = decode_publish(&payload[4..]) {
            return Ok(Frame::Method {
                channel,
                method: Box::new(AMQPClass::Basic(BasicMethod::Publish(publish))),
            });
        }
    }
    if payload.len() < 4 {
        return Err(AmqpError::frame_error(format!(
            "cannot decode {}",
            erlang_binary(payload)
        )));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if !is_known_method(class_id, method_id) {
        return Err(AmqpError::command_invalid(format!(
            "unknown method: class {class_id}, method {method_id}"
        ))
        .on(class_id, method_id));
    }
    if let Err(depth) = super::decode_guard::check_tables(class_id, method_id, payload) {
        return Err(
            AmqpError::frame_error(format!("field table nesting deeper than {depth}"))
                .on(class_id, method_id),
        );
    }
    // amq-protocol parses basic.qos without its prefetch-size field, so the
    // check RabbitMQ makes (540 for a non-zero size) is made here.
    if (class_id, method_id) == (60, 10) && payload.len() >= 8 {
        let prefetch_size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if prefetch_size != 0 {
            return Err(
                AmqpError::not_implemented(format!("prefetch_size!=0 ({prefetch_size})"))
                    .on(60, 10),
            );
        }
    }
    match parse_class(payload) {
        Ok((&[], method)) => Ok(Frame::Method {
            channel,
            method: Box::new(method),
        }),
        _ => Err(
            AmqpError::frame_error(format!("cannot decode {}", erlang_binary(&payload[4..])))
                .on(class_id, method_id),
        ),
    }
}

/// basic.publish arguments (after class and method ids): ticket, exchange,
/// routing key, mandatory and immediate bits; `None` unless well formed and
/// exactly as long as the payload.
fn decode_publish(args: &[u8]) -> Option<Publish> {
    let mut cursor = Cursor { buf: args, pos: 2 };
    let exchange = cursor.shortstr()?;
    let routing_key = cursor.shortstr()?;
    let bits = cursor.u8()?;
    if cursor.pos != args.len() {
        return None;
    }
    Some(Publish {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

/// Reads the fields of a payload by hand; every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        Some(u64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn shortstr(&mut self) -> Option<ShortString> {
        let len = self.u8()? as usize;
        if len == 0 {
            // The default exchange, mostly.
            return Some(ShortString::default());
        }
        let text = std::str::from_utf8(self.take(len)?).ok()?;
        Some(ShortString::from(text))
    }
}

/// A content header decoded by hand, with the same result as
/// amq-protocol's `parse_content_header`; `None` sends it the general way.
fn decode_header_fast(payload: &[u8]) -> Option<(u16, u64, Arc<BasicProperties>)> {
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    let class_id = c.u16()?;
    let _weight = c.u16()?;
    let body_size = c.u64()?;
    let flags = c.u16()?;
    if flags == 0 && c.pos == payload.len() {
        return Some((class_id, body_size, super::no_properties()));
    }
    let mut props = BasicProperties::default();
    let bit = |n: u16| flags & (1 << (15 - n)) != 0;
    if bit(0) {
        props = props.with_content_type(c.shortstr()?);
    }
    if bit(1) {
        props = props.with_content_encoding(c.shortstr()?);
    }
    if bit(2) {
        let (rest, headers) = parse_field_table(&payload[c.pos..]).ok()?;
        c.pos = payload.len() - rest.len();
        props = props.with_headers(headers);
    }
    if bit(3) {
        props = props.with_delivery_mode(c.u8()?);
    }
    if bit(4) {
        props = props.with_priority(c.u8()?);
    }
    if bit(5) {
        props = props.with_correlation_id(c.shortstr()?);
    }
    if bit(6) {
        props = props.with_reply_to(c.shortstr()?);
    }
    if bit(7) {
        props = props.with_expiration(c.shortstr()?);
    }
    if bit(8) {
        props = props.with_message_id(c.shortstr()?);
    }
    if bit(9) {
        props = props.with_timestamp(c.u64()?);
    }
    if bit(10) {
        props = props.with_type(c.shortstr()?);
    }
    if bit(11) {
        props = props.with_user_id(c.shortstr()?);
    }
    if bit(12) {
        props = props.with_app_id(c.shortstr()?);
    }
    if bit(13) {
        props = props.with_cluster_id(c.shortstr()?);
    }
    if c.pos != payload.len() {
        return None;
    }
    Some((class_id, body_size, Arc::new(props)))
}

/// class-id (2) + weight (2) + body-size (8), then the properties.
const HEADER_FIXED: usize = 12;

/// A content header's class id, body size and properties; a successful
/// decode means the payload holds at least `HEADER_FIXED` bytes.
fn decode_header(payload: &[u8]) -> Result<(u16, u64, Arc<BasicProperties>), AmqpError> {
    if payload.len() >= HEADER_FIXED
        && !super::decode_guard::properties_depth_ok(&payload[HEADER_FIXED..])
    {
        return Err(AmqpError::frame_error("field table nesting too deep"));
    }
    if let Some((class_id, body_size, properties)) = decode_header_fast(payload) {
        return Ok((class_id, body_size, properties));
    }
    match parse_content_header(payload) {
        Ok((&[], header)) => Ok((
            header.class_id,
            header.body_size,
            Arc::new(header.properties),
        )),
        _ => Err(AmqpError::frame_error(format!(
            "cannot decode {}",
            erlang_binary(payload)
        ))),
    }
}

/// Every class/method pair of AMQP 0-9-1 (both directions).
fn is_known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::gen_properties;
    use amq_protocol::types::{AMQPValue, FieldTable};

    /// A small deterministic generator (xorshift), for mutation tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn publish_payload(exchange: &[u8], routing_key: &[u8], bits: u8) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 40, 0, 0];
        p.push(exchange.len() as u8);
        p.extend_from_slice(exchange);
        p.push(routing_key.len() as u8);
        p.extend_from_slice(routing_key);
        p.push(bits);
        p
    }

    fn via_amq_protocol(payload: &[u8]) -> Option<AMQPClass> {
        match parse_class(payload) {
            Ok((&[], method)) => Some(method),
            _ => None,
        }
    }

    #[test]
    fn hand_decoded_publish_matches_amq_protocol() {
        let cases = [
            publish_payload(b"", b"q", 0),
            publish_payload(b"amq.topic", b"a.b.c", 1),
            publish_payload(b"x", b"", 2),
            publish_payload(b"x", b"y", 3),
            publish_payload(&[b'e'; 255], &[b'k'; 255], 0),
            publish_payload("ünïcødé".as_bytes(), "ключ".as_bytes(), 0),
        ];
        for payload in &cases {
            let fast = decode_publish(&payload[4..]).expect("well formed");
            let general = via_amq_protocol(payload).expect("amq-protocol accepts it");
            assert_eq!(
                AMQPClass::Basic(BasicMethod::Publish(fast)),
                general,
                "{payload:?}"
            );
        }
    }

    #[test]
    fn malformed_publish_is_left_to_amq_protocol() {
        // Invalid UTF-8, truncated, trailing bytes.
        for payload in [
            publish_payload(&[0xff, 0xfe], b"k", 0),
            publish_payload(b"x", b"k", 0)[..8].to_vec(),
            [publish_payload(b"x", b"k", 0), vec![0]].concat(),
        ] {
            assert!(decode_publish(&payload[4..]).is_none(), "{payload:?}");
            let err = FrameDecoder::new(131072)
                .decode(&mut frame(1, &payload))
                .unwrap_err();
            assert!(err.text.starts_with("FRAME_ERROR - cannot decode"), "{err}");
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let base = publish_payload(b"exchange", b"routing.key", 1);
        for _ in 0..20_000 {
            let mut payload = base.clone();
            let i = 4 + (rng.next() as usize) % (payload.len() - 4);
            payload[i] = rng.next() as u8;
            if rng.next().is_multiple_of(4) {
                payload.truncate(4 + (rng.next() as usize) % (payload.len() - 4));
            }
            let fast =
                decode_publish(&payload[4..]).map(|p| AMQPClass::Basic(BasicMethod::Publish(p)));
            let general = via_amq_protocol(&payload);
            if fast.is_some() {
                assert_eq!(fast, general, "{payload:?}");
            }
        }
    }

    fn frame(frame_type: u8, payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[frame_type, 0, 1]);
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(payload);
        buf.extend_from_slice(&[FRAME_END]);
        buf
    }

    fn header_payload(props: &BasicProperties, body_size: u64) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&body_size.to_be_bytes());
        let ctx = amq_protocol::frame::WriteContext::from(Vec::new());
        let (raw, _) = gen_properties(props)(ctx).unwrap().into_inner();
        p.extend_from_slice(&raw);
        p
    }

    fn all_properties() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString("v".into()));
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::LongLongInt(-5));
        headers.insert("t".into(), AMQPValue::FieldTable(inner));
        BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_correlation_id("corr".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_expiration("60000".into())
            .with_message_id("id-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("kind".into())
            .with_user_id("guest".into())
            .with_app_id("app".into())
            .with_cluster_id("cluster".into())
    }

    fn via_parse_content_header(payload: &[u8]) -> Option<(u16, u64, BasicProperties)> {
        match parse_content_header(payload) {
            Ok((&[], h)) => Some((h.class_id, h.body_size, h.properties)),
            _ => None,
        }
    }

    #[test]
    fn hand_decoded_header_matches_amq_protocol() {
        let full = all_properties();
        let cases = [
            BasicProperties::default(),
            BasicProperties::default().with_delivery_mode(2),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_timestamp(42),
            BasicProperties::default().with_headers(FieldTable::default()),
            full.clone(),
        ];
        for (i, props) in cases.iter().enumerate() {
            let payload = header_payload(props, 1000 + i as u64);
            let (class_id, body_size, fast) = decode_header_fast(&payload).expect("well formed");
            assert_eq!(
                Some((class_id, body_size, (*fast).clone())),
                via_parse_content_header(&payload)
            );
            assert_eq!(&*fast, props);
        }
        // Mutations: whatever the hand decoder accepts, amq-protocol decodes
        // to the same thing.
        let base = header_payload(&full, 77);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut payload = base.clone();
            let i = (rng.next() as usize) % payload.len();
            payload[i] = rng.next() as u8;
            if rng.next().is_multiple_of(4) {
                payload.truncate((rng.next() as usize) % payload.len());
            }
            if let Some((class_id, body_size, fast)) = decode_header_fast(&payload) {
                accepted += 1;
                assert_eq!(
                    Some((class_id, body_size, (*fast).clone())),
                    via_parse_content_header(&payload),
                    "{payload:?}"
                );
            }
        }
        assert!(accepted > 100);
    }

    #[test]
    fn hand_decoded_frames_keep_the_raw_properties() {
        let props = BasicProperties::default().with_priority(3);
        let payload = header_payload(&props, 5);
        let mut buf = frame(FRAME_HEADER, &payload);
        let mut publish = frame(FRAME_METHOD, &publish_payload(b"", b"q", 0));
        let decoder = FrameDecoder::new(131072);
        match decoder.decode(&mut publish).unwrap().unwrap() {
            Frame::Method { channel, method } => {
                assert_eq!(channel, 1);
                assert!(matches!(*method, AMQPClass::Basic(BasicMethod::Publish(_))));
            }
            other => panic!("unexpected {other:?}"),
        }
        match decoder.decode(&mut buf).unwrap().unwrap() {
            Frame::Header {
                class_id,
                body_size,
                properties,
                raw_properties,
                ..
            } => {
                assert_eq!((class_id, body_size), (60, 5));
                assert_eq!(*properties, props);
                assert_eq!(&raw_properties[..], &payload[12..]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

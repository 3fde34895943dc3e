//! Outgoing frames, written straight into a connection's write buffer.

use super::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD};
use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::protocol::{gen_class, AMQPClass, BasicProperties};
use bytes::{BufMut, Bytes, BytesMut};

/// Appends a method frame. Methods are small and rare next to deliveries,
/// so the generic generator is fine here.
pub fn method(buf: &mut BytesMut, channel: u16, method: &AMQPClass) {
    let ctx = WriteContext::from(Vec::with_capacity(64));
    // Generation into a Vec cannot fail for lack of space.
    let Ok(ctx) = gen_class(method)(ctx) else {
        tracing::error!(?method, "could not encode method");
        return;
    };
    let (payload, _) = ctx.into_inner();
    envelope(buf, FRAME_METHOD, channel, &payload);
}

pub fn heartbeat(buf: &mut BytesMut) {
    envelope(buf, FRAME_HEARTBEAT, 0, &[]);
}

/// Encodes properties once, for messages whose properties we changed.
pub fn properties(props: &BasicProperties) -> Bytes {
    let ctx = WriteContext::from(Vec::with_capacity(32));
    match gen_properties(props)(ctx) {
        Ok(ctx) => Bytes::from(ctx.into_inner().0),
        Err(_) => Bytes::from_static(&[0, 0]),
    }
}

/// Appends content header and body frames; the body is split so that no
/// frame exceeds `frame_max`.
pub fn content(
    buf: &mut BytesMut,
    channel: u16,
    raw_properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let header_len = 12 + raw_properties.len();
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    buf.reserve(
        FRAME_OVERHEAD + header_len + body.len() + FRAME_OVERHEAD * body.len().div_ceil(chunk),
    );
    let [c0, c1] = channel.to_be_bytes();
    let [h0, h1, h2, h3] = (header_len as u32).to_be_bytes();
    let [b0, b1, b2, b3, b4, b5, b6, b7] = (body.len() as u64).to_be_bytes();
    // Envelope, class 60, weight 0, body size: one copy.
    buf.extend_from_slice(&[
        FRAME_HEADER,
        c0,
        c1,
        h0,
        h1,
        h2,
        h3,
        0,
        60,
        0,
        0,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
    ]);
    buf.extend_from_slice(raw_properties);
    buf.put_u8(FRAME_END);
    for part in body.chunks(chunk) {
        envelope(buf, FRAME_BODY, channel, part);
    }
}

/// basic.deliver, hand-encoded: it is sent once per message delivered.
pub fn deliver(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let (tag, exchange, routing_key) = (
        shortstr(consumer_tag),
        shortstr(exchange),
        shortstr(routing_key),
    );
    let size = 4 + 1 + tag.len() + 8 + 1 + 1 + exchange.len() + 1 + routing_key.len();
    buf.reserve(size + FRAME_OVERHEAD);
    let [c0, c1] = channel.to_be_bytes();
    let [s0, s1, s2, s3] = (size as u32).to_be_bytes();
    buf.extend_from_slice(&[
        FRAME_METHOD,
        c0,
        c1,
        s0,
        s1,
        s2,
        s3,
        0,
        60,
        0,
        60,
        tag.len() as u8,
    ]);
    buf.extend_from_slice(tag);
    let [t0, t1, t2, t3, t4, t5, t6, t7] = delivery_tag.to_be_bytes();
    buf.extend_from_slice(&[
        t0,
        t1,
        t2,
        t3,
        t4,
        t5,
        t6,
        t7,
        redelivered as u8,
        exchange.len() as u8,
    ]);
    buf.extend_from_slice(exchange);
    buf.put_u8(routing_key.len() as u8);
    buf.extend_from_slice(routing_key);
    buf.put_u8(FRAME_END);
}

/// A short string's bytes, cut at 255.
fn shortstr(s: &str) -> &[u8] {
    &s.as_bytes()[..s.len().min(255)]
}

fn envelope(buf: &mut BytesMut, frame_type: u8, channel: u16, payload: &[u8]) {
    buf.reserve(payload.len() + FRAME_OVERHEAD);
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1, l2, l3] = (payload.len() as u32).to_be_bytes();
    buf.extend_from_slice(&[frame_type, c0, c1, l0, l1, l2, l3]);
    buf.extend_from_slice(payload);
    buf.put_u8(FRAME_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode::{Frame, FrameDecoder};

    #[test]
    fn deliver_round_trips_through_the_decoder() {
        let mut buf = BytesMut::new();
        deliver(&mut buf, 3, "ctag", 42, true, "ex", "rk");
        let frame = FrameDecoder::new(131072).decode(&mut buf).unwrap().unwrap();
        match frame {
            Frame::Method { channel, method } => {
                assert_eq!(channel, 3);
                let AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Deliver(d)) =
                    *method
                else {
                    panic!("not a deliver: {method:?}")
                };
                assert_eq!(d.consumer_tag.as_str(), "ctag");
                assert_eq!(d.delivery_tag, 42);
                assert!(d.redelivered);
                assert_eq!(d.exchange.as_str(), "ex");
                assert_eq!(d.routing_key.as_str(), "rk");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn content_bodies_are_split_at_frame_max() {
        let mut buf = BytesMut::new();
        let props = properties(&BasicProperties::default().with_priority(3));
        content(&mut buf, 1, &props, &[7u8; 10_000], 4096);
        let decoder = FrameDecoder::new(4096);
        let mut sizes = vec![];
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            match frame {
                Frame::Header {
                    body_size,
                    properties,
                    ..
                } => {
                    assert_eq!(body_size, 10_000);
                    assert_eq!(*properties.priority(), Some(3));
                }
                Frame::Body { payload, .. } => sizes.push(payload.len()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sizes, vec![4088, 4088, 1824]);
    }
}

//! Incoming frames: the envelope is read here so that the size is checked
//! before a frame is buffered, and bodies are sliced out of the read buffer
//! (`split_to().freeze()`) instead of being copied.

use super::error::{erlang_binary, AmqpError};
use super::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::{parse_class, AMQPClass, BasicProperties};
use bytes::{Buf, Bytes, BytesMut};

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
        properties: Box<BasicProperties>,
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
        let mut frame = buf.split_to(total).freeze();
        frame.advance(HEADER_LEN);
        let payload = frame.split_to(size);
        if frame[0] != FRAME_END {
            return Err(AmqpError::frame_error(format!(
                "type {frame_type}, all octets = {}: {{invalid_frame_end_marker,{}}}",
                erlang_binary(&payload),
                frame[0]
            )));
        }
        match frame_type {
            FRAME_METHOD => decode_method(channel, &payload).map(Some),
            FRAME_HEADER => decode_header(channel, payload).map(Some),
            FRAME_BODY => Ok(Some(Frame::Body { channel, payload })),
            FRAME_HEARTBEAT => Ok(Some(Frame::Heartbeat { channel })),
            other => Err(AmqpError::frame_error(format!(
                "type {other}, all octets = {}: unknown_frame",
                erlang_binary(&payload)
            ))),
        }
    }
}

fn decode_method(channel: u16, payload: &[u8]) -> Result<Frame, AmqpError> {
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

fn decode_header(channel: u16, payload: Bytes) -> Result<Frame, AmqpError> {
    // class-id (2) + weight (2) + body-size (8), then the properties.
    const FIXED: usize = 12;
    if payload.len() >= FIXED && !super::decode_guard::properties_depth_ok(&payload[FIXED..]) {
        return Err(AmqpError::frame_error("field table nesting too deep"));
    }
    match parse_content_header(&payload[..]) {
        Ok((&[], header)) => Ok(Frame::Header {
            channel,
            class_id: header.class_id,
            body_size: header.body_size,
            properties: Box::new(header.properties),
            raw_properties: payload.slice(FIXED..),
        }),
        _ => Err(AmqpError::frame_error(format!(
            "cannot decode {}",
            erlang_binary(&payload)
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

//! Wire format: bytes <-> frames. No broker logic and no I/O of its own.
//!
//! Method and content-header payloads are decoded by `amq-protocol`; the frame
//! envelope is handled here so that sizes are checked before buffering and
//! body frames are sliced out of the read buffer without copying.

pub mod decode;
pub mod decode_guard;
pub mod encode;
pub mod error;
pub mod text;

pub use amq_protocol::protocol::{AMQPClass, BasicProperties};
pub use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
pub use decode::{Frame, FrameDecoder};
pub use error::{AmqpError, ErrorScope};

/// Empty basic properties, shared: a header without properties and a
/// message nobody reads the parsed properties of need no allocation.
pub fn no_properties() -> std::sync::Arc<BasicProperties> {
    static EMPTY: std::sync::LazyLock<std::sync::Arc<BasicProperties>> =
        std::sync::LazyLock::new(Default::default);
    EMPTY.clone()
}

/// The protocol header a 0-9-1 client sends, and the one we answer with when
/// it sends anything else.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// type + channel + size before the payload, frame-end after it.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate (spec: 4096).
pub const FRAME_MIN_SIZE: u32 = 4096;

//! Content header frames: the input is the payload after class id
//! (basic), weight and body size, i.e. property flags and properties, as
//! the decoder gets them on channel 1.
#![no_main]

use broker::protocol::FrameDecoder;
use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&class, rest)) = data.split_first() else {
        return;
    };
    // Mostly basic (60), sometimes anything else.
    let class_id: u16 = if class < 200 { 60 } else { class as u16 };
    let mut payload = Vec::with_capacity(rest.len() + 12);
    payload.extend_from_slice(&class_id.to_be_bytes());
    payload.extend_from_slice(&[0, 0]);
    payload.extend_from_slice(&(rest.len() as u64).to_be_bytes());
    payload.extend_from_slice(rest);
    let mut buf = BytesMut::with_capacity(payload.len() + 8);
    buf.put_u8(2);
    buf.put_u16(1);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(&payload);
    buf.put_u8(0xCE);
    let decoder = FrameDecoder::new(1 << 20);
    let _ = decoder.decode(&mut buf);
});

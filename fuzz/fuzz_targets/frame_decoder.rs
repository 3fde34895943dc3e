//! The frame decoder on arbitrary bytes: every frame it can take off the
//! buffer, until it wants more input or reports a (connection) error. The
//! first byte picks the frame_max, so both the smallest allowed and the
//! default limit are exercised.
#![no_main]

use broker::protocol::FrameDecoder;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let frame_max = match pick % 3 {
        0 => 4096,
        1 => 131_072,
        _ => 1 << 20,
    };
    let decoder = FrameDecoder::new(frame_max);
    let mut buf = BytesMut::from(rest);
    // Each successful decode consumes at least the 8-byte envelope.
    while let Ok(Some(_frame)) = decoder.decode(&mut buf) {}
});

//! Field tables as the broker meets them: the input is the arguments table
//! of a queue.declare, a basic.consume and an exchange.declare (all
//! through the frame decoder, which checks nesting depth before
//! amq-protocol parses), and the client_properties of a start-ok.
#![no_main]

use broker::protocol::FrameDecoder;
use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;

fn frame(payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(payload.len() + 8);
    buf.put_u8(1);
    buf.put_u16(1);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(0xCE);
    buf
}

fn decode(payload: &[u8]) {
    let decoder = FrameDecoder::new(1 << 20);
    let mut buf = frame(payload);
    let _ = decoder.decode(&mut buf);
}

fn with_table(prefix: &[u8], table: &[u8]) -> Vec<u8> {
    let mut payload = prefix.to_vec();
    payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
    payload.extend_from_slice(table);
    payload
}

fuzz_target!(|data: &[u8]| {
    // queue.declare: reserved, queue "q", flags, arguments.
    decode(&with_table(&[0, 50, 0, 10, 0, 0, 1, b'q', 0], data));
    // basic.consume: reserved, queue "q", tag "", flags, arguments.
    decode(&with_table(&[0, 60, 0, 20, 0, 0, 1, b'q', 0, 0], data));
    // exchange.declare: reserved, exchange "x", type "direct", flags, arguments.
    let mut declare = vec![0, 40, 0, 10, 0, 0, 1, b'x', 6];
    declare.extend_from_slice(b"direct");
    declare.push(0);
    decode(&with_table(&declare, data));
    // connection.start-ok: client_properties first.
    let mut start_ok = with_table(&[0, 10, 0, 11], data);
    start_ok.extend_from_slice(&[5, b'P', b'L', b'A', b'I', b'N', 0, 0, 0, 0, 5]);
    start_ok.extend_from_slice(b"en_US");
    decode(&start_ok);
});

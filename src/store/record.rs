//! Log record framing: `len u32 | crc32c u32 | payload`, big-endian. A
//! record whose length runs past the end of the file or whose checksum does
//! not match ends the readable part of a segment (a torn write).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const HEADER: usize = 8;
/// Sanity bound on one record (a message is at most 128 MiB by default).
pub const MAX_RECORD: usize = 1 << 30;

pub const PUBLISH: u8 = 1;
pub const ACK: u8 = 2;
pub const DELIVERED: u8 = 3;

pub fn frame(out: &mut BytesMut, payload: &[u8]) {
    out.put_u32(payload.len() as u32);
    out.put_u32(crc32c::crc32c(payload));
    out.put_slice(payload);
}

/// The next intact record at `pos`, or `None` at the end of the readable log.
pub fn read(data: &Bytes, pos: usize) -> Option<(Bytes, usize)> {
    if pos + HEADER > data.len() {
        return None;
    }
    let mut head = &data[pos..pos + HEADER];
    let len = head.get_u32() as usize;
    let crc = head.get_u32();
    if len == 0 || len > MAX_RECORD || pos + HEADER + len > data.len() {
        return None;
    }
    let payload = data.slice(pos + HEADER..pos + HEADER + len);
    if crc32c::crc32c(&payload) != crc {
        return None;
    }
    Some((payload, pos + HEADER + len))
}

pub fn put_str(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

pub fn put_blob(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

/// A cursor over a payload that fails softly on short input.
pub struct Reader(pub Bytes);

impl Reader {
    pub fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    pub fn u16(&mut self) -> Option<u16> {
        (self.0.remaining() >= 2).then(|| self.0.get_u16())
    }
    pub fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64())
    }
    pub fn str(&mut self) -> Option<String> {
        let len = self.u8()? as usize;
        if self.0.remaining() < len {
            return None;
        }
        String::from_utf8(self.0.split_to(len).to_vec()).ok()
    }
    pub fn blob(&mut self) -> Option<Bytes> {
        if self.0.remaining() < 4 {
            return None;
        }
        let len = self.0.get_u32() as usize;
        (self.0.remaining() >= len).then(|| self.0.split_to(len))
    }
}

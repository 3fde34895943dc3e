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

/// The trailing field of a removal or delivered record: the segment that
/// held the message's publish record when it was written ("none": the
/// message was not live). Such a record matters only while that segment
/// exists; compaction drops it afterwards.
pub const NO_TARGET: u32 = u32::MAX;

pub fn frame(out: &mut BytesMut, payload: &[u8]) {
    out.put_u32(payload.len() as u32);
    out.put_u32(crc32c::crc32c(payload));
    out.put_slice(payload);
}

/// Frames `payload` and `suffix` as one record's payload, without copying
/// the payload first.
pub fn frame_with(out: &mut BytesMut, payload: &[u8], suffix: &[u8]) {
    out.put_u32((payload.len() + suffix.len()) as u32);
    out.put_u32(crc32c::crc32c_append(crc32c::crc32c(payload), suffix));
    out.put_slice(payload);
    out.put_slice(suffix);
}

/// The length field of the record at `pos`, if it is a plausible one.
pub fn plausible_len(data: &[u8], pos: usize) -> Option<usize> {
    let b = data.get(pos..pos + 4)?;
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    (len > 0 && len <= MAX_RECORD).then_some(len)
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
    pub fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32())
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
    /// A short string's bytes, unchecked and not copied.
    pub fn str_bytes(&mut self) -> Option<Bytes> {
        let len = self.u8()? as usize;
        (self.0.remaining() >= len).then(|| self.0.split_to(len))
    }
    pub fn remaining(&self) -> usize {
        self.0.remaining()
    }
    pub fn blob(&mut self) -> Option<Bytes> {
        if self.0.remaining() < 4 {
            return None;
        }
        let len = self.0.get_u32() as usize;
        (self.0.remaining() >= len).then(|| self.0.split_to(len))
    }
}

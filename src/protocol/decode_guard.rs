//! A depth check for field tables, run before `amq-protocol` parses a
//! payload: its parser recurses once per nested table or array, so a frame of
//! nothing but nested tables could exhaust the stack. We refuse nesting past
//! `MAX_DEPTH` (RabbitMQ clients never come close).

pub const MAX_DEPTH: usize = 64;

/// Checks the field table of a method that carries one. `payload` starts with
/// class and method ids. Returns `Err(MAX_DEPTH)` when too deep; malformed
/// input passes, for the real parser to reject.
pub fn check_tables(class_id: u16, method_id: u16, payload: &[u8]) -> Result<(), usize> {
    let mut cursor = Cursor {
        buf: payload,
        pos: 4,
    };
    let located = match (class_id, method_id) {
        (10, 10) => cursor.skip(2),
        (10, 11) => Some(()),
        (40, 10) => cursor
            .skip(2)
            .and_then(|_| cursor.skip_shortstrs(2))
            .and_then(|_| cursor.skip(1)),
        (40, 30) | (40, 40) | (50, 20) => cursor
            .skip(2)
            .and_then(|_| cursor.skip_shortstrs(3))
            .and_then(|_| cursor.skip(1)),
        (50, 50) => cursor.skip(2).and_then(|_| cursor.skip_shortstrs(3)),
        (50, 10) => cursor
            .skip(2)
            .and_then(|_| cursor.skip_shortstrs(1))
            .and_then(|_| cursor.skip(1)),
        (60, 20) => cursor
            .skip(2)
            .and_then(|_| cursor.skip_shortstrs(2))
            .and_then(|_| cursor.skip(1)),
        _ => return Ok(()),
    };
    if located.is_none() {
        return Ok(());
    }
    match cursor.table(0) {
        Err(Deep) => Err(MAX_DEPTH),
        Ok(_) => Ok(()),
    }
}

/// Checks the `headers` table of an encoded basic properties list.
pub fn properties_depth_ok(props: &[u8]) -> bool {
    if props.len() < 2 {
        return true;
    }
    let flags = u16::from_be_bytes([props[0], props[1]]);
    if flags & (1 << 13) == 0 {
        return true;
    }
    let mut cursor = Cursor { buf: props, pos: 2 };
    for bit in [15u16, 14] {
        if flags & (1 << bit) != 0 && cursor.skip_shortstrs(1).is_none() {
            return true;
        }
    }
    cursor.table(0).is_ok()
}

struct Deep;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        if self.pos + n > self.buf.len() {
            return None;
        }
        self.pos += n;
        Some(())
    }

    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u32(&mut self) -> Option<usize> {
        let bytes = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }

    fn skip_shortstrs(&mut self, count: usize) -> Option<()> {
        for _ in 0..count {
            let len = self.u8()? as usize;
            self.skip(len)?;
        }
        Some(())
    }

    /// Walks a table; `Ok` also for malformed input (the parser decides).
    fn table(&mut self, depth: usize) -> Result<(), Deep> {
        if depth >= MAX_DEPTH {
            return Err(Deep);
        }
        let Some(len) = self.u32() else { return Ok(()) };
        let end = (self.pos + len).min(self.buf.len());
        while self.pos < end {
            if self.skip_shortstrs(1).is_none() {
                return Ok(());
            }
            if !self.value(depth)? {
                return Ok(());
            }
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<(), Deep> {
        if depth >= MAX_DEPTH {
            return Err(Deep);
        }
        let Some(len) = self.u32() else { return Ok(()) };
        let end = (self.pos + len).min(self.buf.len());
        while self.pos < end {
            if !self.value(depth)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Skips one typed value; `Ok(false)` when the input is malformed.
    fn value(&mut self, depth: usize) -> Result<bool, Deep> {
        let Some(tag) = self.u8() else {
            return Ok(false);
        };
        let fixed = match tag {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' | b'U' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => match self.u32() {
                Some(len) => len,
                None => return Ok(false),
            },
            b'F' => return self.table(depth + 1).map(|_| true),
            b'A' => return self.array(depth + 1).map(|_| true),
            _ => return Ok(false),
        };
        Ok(self.skip(fixed).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_tables(depth: usize) -> Vec<u8> {
        // innermost: empty table
        let mut inner: Vec<u8> = vec![0, 0, 0, 0];
        for _ in 0..depth {
            let mut entry = vec![1, b'k', b'F'];
            entry.extend_from_slice(&inner);
            let mut table = (entry.len() as u32).to_be_bytes().to_vec();
            table.extend_from_slice(&entry);
            inner = table;
        }
        inner
    }

    #[test]
    fn shallow_tables_pass_and_deep_ones_are_refused() {
        let mut ok = vec![0, 10, 0, 11];
        ok.extend(nested_tables(10));
        assert!(check_tables(10, 11, &ok).is_ok());
        let mut deep = vec![0, 10, 0, 11];
        deep.extend(nested_tables(10_000));
        assert_eq!(check_tables(10, 11, &deep), Err(MAX_DEPTH));
    }
}

//! Message deduplication (queue or exchange argument
//! `x-message-deduplication: true`, LavinMQ's and the RabbitMQ plugin's
//! names): a message whose deduplication key was seen recently is dropped.
//! The key is the value of the message header `x-deduplication-header` (or
//! of the header named by the `x-deduplication-header` argument). The cache
//! holds `x-cache-size` keys (oldest evicted first), each for `x-cache-ttl`
//! ms (a message header `x-cache-ttl` overrides it); without a TTL, keys
//! stay until evicted.

use super::arguments::{as_int, as_string, get};
use super::message::Message;
use crate::protocol::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const DEFAULT_HEADER: &str = "x-deduplication-header";
const DEFAULT_SIZE: usize = 10_000;

pub struct Deduplicator {
    header: String,
    size: usize,
    ttl: Option<Duration>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// key -> expiry (None = until evicted)
    keys: HashMap<Vec<u8>, Option<Instant>>,
    /// Insertion order, for eviction.
    order: VecDeque<Vec<u8>>,
}

impl Deduplicator {
    /// `Some` when the arguments enable deduplication.
    pub fn from_arguments(args: &FieldTable) -> Option<Deduplicator> {
        if !matches!(
            get(args, "x-message-deduplication"),
            Some(AMQPValue::Boolean(true))
        ) {
            return None;
        }
        let size = get(args, "x-cache-size")
            .and_then(as_int)
            .filter(|n| *n > 0)
            .map_or(DEFAULT_SIZE, |n| n.min(10_000_000) as usize);
        let ttl = get(args, "x-cache-ttl")
            .and_then(as_int)
            .filter(|n| *n > 0)
            .map(|ms| Duration::from_millis(ms as u64));
        let header = get(args, "x-deduplication-header")
            .and_then(as_string)
            .unwrap_or_else(|| DEFAULT_HEADER.to_string());
        Some(Deduplicator {
            header,
            size,
            ttl,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// Whether `message` repeats a recent key; a new key is remembered.
    /// Messages without the header are never duplicates.
    pub fn is_duplicate(&self, message: &Message) -> bool {
        let Some(headers) = message.properties.headers() else {
            return false;
        };
        let Some(value) = headers.inner().get(self.header.as_str()) else {
            return false;
        };
        let key = match as_string(value) {
            Some(s) => s.into_bytes(),
            None => format!("{value:?}").into_bytes(),
        };
        let ttl = headers
            .inner()
            .get("x-cache-ttl")
            .and_then(as_int)
            .filter(|n| *n > 0)
            .map(|ms| Duration::from_millis(ms as u64))
            .or(self.ttl);
        let now = Instant::now();
        let mut seen = self.seen.lock();
        if let Some(expiry) = seen.keys.get(&key) {
            if expiry.is_none_or(|at| at > now) {
                return true;
            }
        }
        if seen
            .keys
            .insert(key.clone(), ttl.map(|t| now + t))
            .is_none()
        {
            seen.order.push_back(key);
        }
        while seen.keys.len() > self.size {
            match seen.order.pop_front() {
                Some(oldest) => {
                    seen.keys.remove(&oldest);
                }
                None => break,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BasicProperties, LongString};

    fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-message-deduplication".into(), AMQPValue::Boolean(true));
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn message(key: &str) -> Message {
        let mut h = FieldTable::default();
        h.insert(
            DEFAULT_HEADER.into(),
            AMQPValue::LongString(LongString::from(key)),
        );
        let props = BasicProperties::default().with_headers(h);
        Message::new(
            String::new(),
            String::new(),
            props,
            Default::default(),
            Default::default(),
        )
    }

    #[test]
    fn repeats_are_caught_and_the_cache_is_bounded() {
        let d = Deduplicator::from_arguments(&args(&[("x-cache-size", AMQPValue::LongInt(2))]))
            .unwrap();
        assert!(!d.is_duplicate(&message("a")));
        assert!(d.is_duplicate(&message("a")));
        assert!(!d.is_duplicate(&message("b")));
        assert!(!d.is_duplicate(&message("c"))); // evicts "a"
        assert!(!d.is_duplicate(&message("a")));
        let plain = Message::new(
            String::new(),
            String::new(),
            BasicProperties::default(),
            Default::default(),
            Default::default(),
        );
        assert!(!d.is_duplicate(&plain));
        assert!(!d.is_duplicate(&plain));
    }

    #[test]
    fn keys_expire_after_the_ttl() {
        let d = Deduplicator::from_arguments(&args(&[("x-cache-ttl", AMQPValue::LongInt(30))]))
            .unwrap();
        assert!(!d.is_duplicate(&message("k")));
        assert!(d.is_duplicate(&message("k")));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!d.is_duplicate(&message("k")));
    }

    #[test]
    fn off_unless_enabled() {
        assert!(Deduplicator::from_arguments(&FieldTable::default()).is_none());
    }
}

//! What the message log writer could not store. When a write or sync fails
//! (disk full, an I/O error), the sequence numbers of that batch are
//! "decided" without being synced: the `synced` watermark moves past them
//! and they are recorded here, so a publisher waiting for them gets a
//! `basic.nack` rather than an ack, and a transaction a channel error. The
//! writer keeps the batch and writes it again until it succeeds; meanwhile
//! `failing` is raised, which the broker turns into its disk alarm.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Failed ranges kept (each failure episode adds one; a waiter is told
/// long before this many more episodes pass).
const KEPT_RANGES: usize = 1024;

#[derive(Default)]
struct Ranges {
    /// Inclusive ranges of failed sequence numbers, oldest first.
    kept: VecDeque<(u64, u64)>,
    /// Ranges up to here were dropped to bound memory.
    forgotten_through: u64,
}

pub struct WriteFailures {
    /// Highest failed sequence number (0: none): checking a sequence above
    /// it takes no lock.
    last: AtomicU64,
    ranges: Mutex<Ranges>,
    failing: watch::Sender<bool>,
}

impl Default for WriteFailures {
    fn default() -> Self {
        WriteFailures {
            last: AtomicU64::new(0),
            ranges: Mutex::new(Ranges::default()),
            failing: watch::channel(false).0,
        }
    }
}

impl WriteFailures {
    /// Whether the append with sequence number `seq` (already decided) was
    /// not stored.
    pub fn failed(&self, seq: u64) -> bool {
        if seq > self.last.load(Ordering::Acquire) {
            return false;
        }
        let ranges = self.ranges.lock();
        // At or before a dropped range nothing is known any more: say
        // failed (a nack is never wrong where an ack might be).
        seq <= ranges.forgotten_through || ranges.kept.iter().any(|&(a, b)| (a..=b).contains(&seq))
    }

    /// Records that sequence numbers `from..=to` failed; must come before
    /// the watermark moves past them.
    pub(super) fn record(&self, from: u64, to: u64) {
        if to < from {
            return;
        }
        let mut ranges = self.ranges.lock();
        match ranges.kept.back_mut() {
            Some(last) if last.1 + 1 >= from => last.1 = last.1.max(to),
            _ => ranges.kept.push_back((from, to)),
        }
        while ranges.kept.len() > KEPT_RANGES {
            if let Some((_, end)) = ranges.kept.pop_front() {
                ranges.forgotten_through = end;
            }
        }
        self.last.fetch_max(to, Ordering::Release);
    }

    /// Raises or clears the failing state; true if it changed.
    pub(super) fn set_failing(&self, failing: bool) -> bool {
        self.failing.send_if_modified(|f| {
            let changed = *f != failing;
            *f = failing;
            changed
        })
    }

    /// True while writes fail (cleared by the first one that succeeds).
    pub fn failing(&self) -> watch::Receiver<bool> {
        self.failing.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_ranges_merge_and_are_found() {
        let f = WriteFailures::default();
        assert!(!f.failed(5));
        f.record(3, 5);
        f.record(6, 9);
        f.record(20, 20);
        assert!(!f.failed(2));
        assert_eq!(f.ranges.lock().kept, [(3, 9), (20, 20)]);
        for seq in [3, 5, 6, 9, 20] {
            assert!(f.failed(seq), "{seq}");
        }
        for seq in [10, 19, 21, 100] {
            assert!(!f.failed(seq), "{seq}");
        }
    }

    #[test]
    fn forgotten_ranges_count_as_failed() {
        let f = WriteFailures::default();
        for i in 0..=KEPT_RANGES as u64 {
            f.record(10 * i + 1, 10 * i + 2);
        }
        assert!(f.failed(1));
        assert!(!f.failed(5), "between ranges, after the forgotten one");
        assert!(!f.failed(15));
        assert!(f.failed(12));
    }

    #[test]
    fn failing_state_reports_changes_only() {
        let f = WriteFailures::default();
        let rx = f.failing();
        assert!(f.set_failing(true));
        assert!(!f.set_failing(true));
        assert!(*rx.borrow());
        assert!(f.set_failing(false));
    }
}

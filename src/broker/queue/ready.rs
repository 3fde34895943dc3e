//! The ready messages of a queue: one FIFO, or one per priority level for a
//! priority queue (highest level first, FIFO within a level). Requeued
//! messages go back to their original position (by sequence number).
//!
//! Past the queue's memory bound (see `paging`), messages are written to
//! the queue's page file. Each level is then three runs in sequence order:
//! `head` (in memory, delivered from), `paged` (compact entries) and `tail`
//! (in memory again: messages that came while the bound allowed it). When
//! `head` runs dry it is refilled from `paged` in batches, then from
//! `tail`.

use super::paging::{Budget, Entry, Limits, PageBudget, PageFile};
use super::QueuedMessage;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Default)]
struct Level {
    head: VecDeque<QueuedMessage>,
    paged: VecDeque<Entry>,
    tail: VecDeque<QueuedMessage>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.head.is_empty() && self.paged.is_empty() && self.tail.is_empty()
    }
}

/// What `drain` took out.
#[derive(Default)]
pub struct Drained {
    /// The messages that were in memory.
    pub messages: Vec<QueuedMessage>,
    /// The store ids of paged messages that had one.
    pub store_ids: Vec<u64>,
    /// How many messages in all.
    pub count: usize,
}

pub struct Ready {
    /// Index = priority level; a plain queue has one level.
    levels: Vec<Level>,
    len: usize,
    bytes: usize,
    budget: Budget,
    /// Created when the queue first pages.
    pages: Option<PageFile>,
}

impl Ready {
    /// Counted against `pages`, the broker's budget.
    pub fn with_limits(max_priority: Option<u8>, limits: Limits, pages: Arc<PageBudget>) -> Self {
        let levels = max_priority.map_or(1, |p| p as usize + 1);
        Ready {
            levels: (0..levels).map(|_| Level::default()).collect(),
            len: 0,
            bytes: 0,
            budget: Budget::new(pages, limits),
            pages: None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many messages are paged out.
    pub fn paged_len(&self) -> usize {
        self.levels.iter().map(|l| l.paged.len()).sum()
    }

    /// The broker's paging budget this queue counts against.
    pub fn page_budget(&self) -> Arc<PageBudget> {
        self.budget.shared().clone()
    }

    /// Waits for the page I/O thread (see `PageBudget::settle_io`).
    #[cfg(test)]
    fn settle_io(&self) {
        self.budget.shared().settle_io();
    }

    /// Batches of paged messages that came from a read-ahead.
    pub fn prefetched_batches(&self) -> u64 {
        self.pages.as_ref().map_or(0, PageFile::prefetched)
    }

    /// The page files on disk.
    pub fn page_files(&self) -> Vec<PathBuf> {
        self.pages.as_ref().map(PageFile::files).unwrap_or_default()
    }

    fn level_of(&self, message: &QueuedMessage) -> usize {
        let priority = message.message.properties.priority().unwrap_or(0) as usize;
        priority.min(self.levels.len() - 1)
    }

    /// Writes a message to the page file; gives it back on failure.
    fn page(&mut self, message: &QueuedMessage) -> Option<Entry> {
        let pages = self
            .pages
            .get_or_insert_with(|| PageFile::new(self.budget.shared().clone()));
        match pages.write(message) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::error!(error = %e, "cannot page message out (kept in memory)");
                None
            }
        }
    }

    pub fn push_back(&mut self, message: QueuedMessage) {
        let level = self.level_of(&message);
        self.len += 1;
        self.bytes += message.message.body_size();
        let footprint = Budget::footprint(&message);
        if self.budget.should_page(footprint) && self.spill_tail(level) {
            if let Some(entry) = self.page(&message) {
                self.levels[level].paged.push_back(entry);
                return;
            }
        }
        self.budget.add(footprint);
        let l = &mut self.levels[level];
        if l.paged.is_empty() && l.tail.is_empty() {
            l.head.push_back(message);
        } else {
            l.tail.push_back(message);
        }
    }

    /// Pages out a level's tail, so that what follows can be paged in
    /// order. False if that failed.
    fn spill_tail(&mut self, level: usize) -> bool {
        while let Some(message) = self.levels[level].tail.pop_front() {
            match self.page(&message) {
                Some(entry) => {
                    self.budget.sub(Budget::footprint(&message));
                    self.levels[level].paged.push_back(entry);
                }
                None => {
                    self.levels[level].tail.push_front(message);
                    return false;
                }
            }
        }
        true
    }

    /// Puts a message back where its sequence number says.
    pub fn insert_by_seq(&mut self, message: QueuedMessage) {
        let level = self.level_of(&message);
        self.len += 1;
        self.bytes += message.message.body_size();
        let seq = message.seq;
        let l = &self.levels[level];
        let in_tail = l.tail.front().is_some_and(|m| m.seq < seq);
        let in_head = !in_tail && l.paged.front().is_none_or(|e| seq < e.seq);
        if !in_head && !in_tail {
            // Among paged messages (not seen in practice: a requeued
            // message was delivered from the head).
            if let Some(entry) = self.page(&message) {
                let paged = &mut self.levels[level].paged;
                let pos = paged.partition_point(|e| e.seq < seq);
                paged.insert(pos, entry);
                return;
            }
        }
        self.budget.add(Budget::footprint(&message));
        let l = &mut self.levels[level];
        let queue = if in_tail { &mut l.tail } else { &mut l.head };
        let pos = queue.partition_point(|m| m.seq < seq);
        queue.insert(pos, message);
    }

    /// Makes sure a non-empty level has its next message in `head`; when
    /// it reads a batch back, the next one is read ahead on the page I/O
    /// thread meanwhile.
    fn load(&mut self, level: usize) {
        if !self.levels[level].head.is_empty() {
            return;
        }
        self.refill(level);
        if let Some(pages) = &mut self.pages {
            pages.read_ahead(self.levels[level].paged.iter());
        }
    }

    fn refill(&mut self, level: usize) {
        while self.levels[level].head.is_empty() {
            let l = &mut self.levels[level];
            if l.paged.is_empty() {
                std::mem::swap(&mut l.head, &mut l.tail);
                return;
            }
            let n = PageFile::batch_len(l.paged.iter());
            let entries: Vec<Entry> = l.paged.drain(..n).collect();
            let read = match &mut self.pages {
                Some(pages) => pages.read(&entries),
                None => entries.iter().map(|_| None).collect(),
            };
            for (entry, message) in entries.iter().zip(read) {
                match message {
                    Some(message) => {
                        self.budget.add(Budget::footprint(&message));
                        self.levels[level].head.push_back(message);
                    }
                    None => {
                        // Logged by the page file.
                        self.len -= 1;
                        self.bytes -= entry.body_len().min(self.bytes);
                    }
                }
            }
        }
    }

    /// The first non-empty level (highest first, or lowest), loaded.
    fn first_level(&mut self, highest_first: bool) -> Option<usize> {
        let n = self.levels.len();
        for i in 0..n {
            let level = if highest_first { n - 1 - i } else { i };
            if self.levels[level].is_empty() {
                continue;
            }
            self.load(level);
            if !self.levels[level].head.is_empty() {
                return Some(level);
            }
        }
        None
    }

    fn pop_level(&mut self, level: usize) -> Option<QueuedMessage> {
        let message = self.levels[level].head.pop_front()?;
        self.len -= 1;
        self.bytes -= message.message.body_size();
        self.budget.sub(Budget::footprint(&message));
        Some(message)
    }

    /// The next message to deliver (read back from the page file if need be).
    pub fn front(&mut self) -> Option<&QueuedMessage> {
        let level = self.first_level(true)?;
        self.levels[level].head.front()
    }

    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let level = self.first_level(true)?;
        self.pop_level(level)
    }

    /// The oldest message of the lowest level: what drop-head overflow drops.
    pub fn pop_oldest_lowest(&mut self) -> Option<QueuedMessage> {
        let level = self.first_level(false)?;
        self.pop_level(level)
    }

    /// Copies of up to `count` ready messages from position `offset` on, in
    /// delivery order, leaving the queue as it is: paged messages are read
    /// from the page file and stay paged.
    pub fn peek(&self, offset: usize, count: usize) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        let mut skip = offset;
        for level in self.levels.iter().rev() {
            let (head, paged) = (level.head.len(), level.paged.len());
            let total = head + paged + level.tail.len();
            if skip >= total {
                skip -= total;
                continue;
            }
            for i in skip..total {
                if out.len() >= count {
                    return out;
                }
                let message = if i < head {
                    level.head.get(i).cloned()
                } else if i < head + paged {
                    let entry = &level.paged[i - head];
                    self.pages.as_ref().and_then(|p| p.peek(entry))
                } else {
                    level.tail.get(i - head - paged).cloned()
                };
                out.extend(message);
            }
            skip = 0;
        }
        out
    }

    /// Takes every message out: those in memory, and the store ids of the
    /// paged ones (which are not read back). The page file goes.
    pub fn drain(&mut self) -> Drained {
        let mut drained = Drained {
            count: self.len,
            ..Default::default()
        };
        for level in self.levels.iter_mut().rev() {
            drained.messages.extend(level.head.drain(..));
            for entry in level.paged.drain(..) {
                if entry.has_store_id() {
                    if let Some(id) = self.pages.as_ref().and_then(|p| p.store_id(&entry)) {
                        drained.store_ids.push(id);
                    }
                }
            }
            drained.messages.extend(level.tail.drain(..));
        }
        for message in &drained.messages {
            self.budget.sub(Budget::footprint(message));
        }
        // Its files are deleted.
        self.pages = None;
        self.len = 0;
        self.bytes = 0;
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::protocol::BasicProperties;
    use bytes::Bytes;

    fn message(seq: u64, priority: Option<u8>, store_id: Option<u64>) -> QueuedMessage {
        let mut properties = BasicProperties::default();
        if let Some(p) = priority {
            properties = properties.with_priority(p);
        }
        let raw = crate::protocol::encode::properties(&properties);
        let mut m = Message::new(
            "ex".into(),
            format!("key{seq}"),
            properties,
            raw,
            Bytes::from(format!("body {seq}").repeat(20)),
        );
        m.store_id = store_id;
        QueuedMessage {
            seq,
            message: Arc::new(m),
            redelivered: seq.is_multiple_of(3),
            expires_at: None,
            delivery_count: (seq % 5) as u32,
        }
    }

    fn small() -> Limits {
        Limits {
            count: Some(10),
            bytes: None,
        }
    }

    #[test]
    fn pages_beyond_the_bound_and_reads_back_in_order() {
        let mut ready = Ready::with_limits(None, small(), Arc::default());
        for seq in 0..1000 {
            ready.push_back(message(seq, None, None));
        }
        assert_eq!(ready.len(), 1000);
        assert_eq!(ready.paged_len(), 990);
        assert!(!ready.page_files().is_empty());
        let bytes = ready.bytes();
        let mut total = 0;
        for seq in 0..1000 {
            let m = ready.pop_front().unwrap();
            assert_eq!(m.seq, seq);
            assert_eq!(m.message.routing_key, format!("key{seq}"));
            assert_eq!(m.message.body, format!("body {seq}").repeat(20));
            assert_eq!(m.redelivered, seq.is_multiple_of(3));
            assert_eq!(m.delivery_count, (seq % 5) as u32);
            total += m.message.body_size();
        }
        assert_eq!(total, bytes);
        assert!(ready.is_empty());
        assert_eq!(ready.bytes(), 0);
    }

    #[test]
    fn peek_reads_paged_messages_without_taking_them() {
        let mut ready = Ready::with_limits(Some(1), small(), Arc::default());
        for seq in 0..100 {
            ready.push_back(message(seq, Some((seq >= 90) as u8), None));
        }
        assert!(ready.paged_len() > 0);
        let seqs = |v: Vec<QueuedMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        // Priority 1 first (90..100), then priority 0 in order.
        assert_eq!(
            seqs(ready.peek(0, 12)),
            [90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 0, 1]
        );
        assert_eq!(seqs(ready.peek(50, 3)), [40, 41, 42]);
        let last = ready.peek(99, 10);
        assert_eq!(seqs(last.clone()), [89]);
        assert_eq!(last[0].message.routing_key, "key89");
        assert!(ready.peek(100, 5).is_empty());
        assert_eq!(ready.len(), 100);
        let order: Vec<u64> = std::iter::from_fn(|| ready.pop_front().map(|m| m.seq)).collect();
        assert_eq!(order.len(), 100);
        assert_eq!(order[10..], (0..90).collect::<Vec<_>>());
    }

    #[test]
    fn requeue_priorities_and_drop_head() {
        let mut ready = Ready::with_limits(Some(2), small(), Arc::default());
        for seq in 0..300 {
            ready.push_back(message(seq, Some((seq % 3) as u8), None));
        }
        let first = ready.pop_front().unwrap();
        assert_eq!(first.seq, 2);
        let second = ready.pop_front().unwrap();
        assert_eq!(second.seq, 5);
        ready.insert_by_seq(second);
        ready.insert_by_seq(first);
        let lowest = ready.pop_oldest_lowest().unwrap();
        assert_eq!(lowest.seq, 0);
        let mut order = Vec::new();
        while let Some(m) = ready.pop_front() {
            order.push(m.seq);
        }
        let mut expected: Vec<u64> = (0..300).filter(|s| s % 3 == 2).collect();
        expected.extend((0..300).filter(|s| s % 3 == 1));
        expected.extend((3..300).filter(|s| s % 3 == 0));
        assert_eq!(order, expected);
    }

    #[test]
    fn drain_returns_store_ids_of_paged_messages_and_removes_files() {
        let mut ready = Ready::with_limits(None, small(), Arc::default());
        for seq in 0..100 {
            ready.push_back(message(
                seq,
                None,
                seq.is_multiple_of(2).then_some(seq + 1000),
            ));
        }
        let files = ready.page_files();
        assert!(files.iter().all(|f| f.exists()));
        let drained = ready.drain();
        ready.settle_io();
        assert_eq!(drained.count, 100);
        assert_eq!(drained.messages.len(), 10);
        let mut ids = drained.store_ids.clone();
        ids.extend(drained.messages.iter().filter_map(|m| m.message.store_id));
        ids.sort();
        assert_eq!(
            ids,
            (0..100).step_by(2).map(|s| s + 1000).collect::<Vec<_>>()
        );
        assert!(files.iter().all(|f| !f.exists()));
        assert!(ready.is_empty());
    }

    #[test]
    fn tail_in_memory_after_the_head_drains_below_the_bound() {
        let mut ready = Ready::with_limits(None, small(), Arc::default());
        for seq in 0..30 {
            ready.push_back(message(seq, None, None));
        }
        for seq in 0..10 {
            assert_eq!(ready.pop_front().unwrap().seq, seq);
        }
        // Below the bound again: kept in memory behind the paged ones,
        // then paged out with them once past it.
        for seq in 30..35 {
            ready.push_back(message(seq, None, None));
        }
        assert_eq!(ready.paged_len(), 20);
        for seq in 35..50 {
            ready.push_back(message(seq, None, None));
        }
        assert_eq!(ready.paged_len(), 31);
        let requeued = ready.pop_front().unwrap();
        assert_eq!(requeued.seq, 10);
        ready.insert_by_seq(requeued);
        let order: Vec<u64> = std::iter::from_fn(|| ready.pop_front().map(|m| m.seq)).collect();
        assert_eq!(order, (10..50).collect::<Vec<_>>());
        assert_eq!(ready.bytes(), 0);
    }

    fn sized(seq: u64, size: usize) -> QueuedMessage {
        let mut m = message(seq, None, None);
        let mut body = vec![(seq % 251) as u8; size];
        body[..8].copy_from_slice(&seq.to_be_bytes());
        Arc::get_mut(&mut m.message).unwrap().body = Bytes::from(body);
        m
    }

    #[test]
    fn segments_roll_over_and_are_deleted_once_read() {
        let mut ready = Ready::with_limits(None, small(), Arc::default());
        const MIB: usize = 1 << 20;
        for seq in 0..150 {
            ready.push_back(sized(seq, MIB));
        }
        let files = ready.page_files();
        assert!(files.len() >= 2, "segments: {files:?}");
        for seq in 0..100 {
            let m = ready.pop_front().unwrap();
            assert_eq!(m.seq, seq);
            assert_eq!(m.message.body[..8], seq.to_be_bytes());
            assert_eq!(m.message.body.len(), MIB);
        }
        ready.settle_io();
        assert!(!files[0].exists(), "first segment deleted once read");
        assert!(ready.prefetched_batches() > 0, "batches were read ahead");
        let rest: Vec<u64> = std::iter::from_fn(|| ready.pop_front().map(|m| m.seq)).collect();
        assert_eq!(rest, (100..150).collect::<Vec<_>>());
    }

    #[test]
    fn each_budget_counts_and_pages_on_its_own() {
        let a: Arc<PageBudget> = Arc::default();
        let b: Arc<PageBudget> = Arc::default();
        let mut ready = Ready::with_limits(None, small(), a.clone());
        for seq in 0..100 {
            ready.push_back(message(seq, None, None));
        }
        assert!(a.in_memory() > 0);
        assert_eq!(b.in_memory(), 0);
        let dir_a = a.dir().unwrap().to_path_buf();
        let dir_b = b.dir().unwrap().to_path_buf();
        assert_ne!(dir_a, dir_b);
        let files = ready.page_files();
        assert!(!files.is_empty());
        assert!(files.iter().all(|f| f.parent() == Some(dir_a.as_path())));
        assert_eq!(std::fs::read_dir(&dir_b).unwrap().count(), 0);
        while ready.pop_front().is_some() {}
        assert_eq!(a.in_memory(), 0);
        drop(ready);
        drop(a);
        assert!(
            !dir_a.exists(),
            "a temp page directory goes with its budget"
        );
        assert!(dir_b.exists());
    }

    #[test]
    fn unreadable_pages_drop_messages_without_panicking() {
        let mut ready = Ready::with_limits(None, small(), Arc::default());
        for seq in 0..100 {
            ready.push_back(sized(seq, 4096));
        }
        // Written out (not still in memory), then cut off.
        ready.settle_io();
        for file in ready.page_files() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
        let got: Vec<u64> = std::iter::from_fn(|| ready.pop_front().map(|m| m.seq)).collect();
        // The first 10 were in memory; what was still buffered is read back.
        assert!(got.len() >= 10 && got.len() < 100, "got {}", got.len());
        assert_eq!(got[..10], (0..10).collect::<Vec<_>>());
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert!(ready.is_empty());
        assert_eq!(ready.bytes(), 0);
    }
}

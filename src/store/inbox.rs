//! The message log writer's in-box. Publishers push operations under one
//! short lock, taking their sequence number in the same critical section
//! (so the writer sees them in sequence order and "synced up to N" means
//! everything up to N); the writer takes everything waiting in one go.
//!
//! Cheaper per operation than a channel, which hands each message over
//! through its own slot on both sides: here a push is a lock and a
//! `Vec::push`, a take is one swap, and the writer is woken only when it
//! sleeps.

use parking_lot::{Condvar, Mutex};

pub struct Inbox<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    next_seq: u64,
    items: Vec<T>,
    taker_waiting: bool,
    closed: bool,
}

impl<T> Inbox<T> {
    /// An empty in-box whose first push gets sequence number `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        Inbox {
            state: Mutex::new(State {
                next_seq: first_seq,
                items: Vec::new(),
                taker_waiting: false,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Pushes the item made from the next sequence number and returns that
    /// number; `None` (and nothing pushed) once the in-box is closed.
    pub fn push(&self, make: impl FnOnce(u64) -> T) -> Option<u64> {
        let mut state = self.state.lock();
        if state.closed {
            return None;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.items.push(make(seq));
        let wake = std::mem::take(&mut state.taker_waiting);
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Some(seq)
    }

    /// Appends everything waiting to `into`, first waiting for at least
    /// one item if `wait` is set. Returns false once the in-box is closed
    /// and empty.
    pub fn take(&self, into: &mut Vec<T>, wait: bool) -> bool {
        let mut state = self.state.lock();
        while wait && state.items.is_empty() && !state.closed {
            state.taker_waiting = true;
            self.ready.wait(&mut state);
        }
        if state.items.is_empty() {
            return !state.closed;
        }
        if into.is_empty() {
            std::mem::swap(&mut state.items, into);
        } else {
            into.append(&mut state.items);
        }
        true
    }

    /// As `take` with waiting, but gives up after `timeout` (returning
    /// true with nothing taken, unless closed).
    pub fn take_timeout(&self, into: &mut Vec<T>, timeout: std::time::Duration) -> bool {
        let mut state = self.state.lock();
        if state.items.is_empty() && !state.closed {
            state.taker_waiting = true;
            let _ = self.ready.wait_for(&mut state, timeout);
        }
        if state.items.is_empty() {
            return !state.closed;
        }
        if into.is_empty() {
            std::mem::swap(&mut state.items, into);
        } else {
            into.append(&mut state.items);
        }
        true
    }

    /// No more pushes; the taker gets what is left, then `false`.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn items_arrive_in_sequence_order_across_threads() {
        let inbox = Arc::new(Inbox::new(1));
        let pushers: Vec<_> = (0..4)
            .map(|_| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        inbox.push(|seq| seq);
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        let mut batch = Vec::new();
        while seen.len() < 40_000 {
            assert!(inbox.take(&mut batch, true));
            seen.append(&mut batch);
        }
        for p in pushers {
            p.join().unwrap();
        }
        assert!(seen.iter().copied().eq(1..=40_000));
    }

    #[test]
    fn close_hands_over_what_is_left_then_ends() {
        let inbox = Inbox::new(7);
        assert_eq!(inbox.push(|seq| seq), Some(7));
        let mut batch = Vec::new();
        assert!(inbox.take(&mut batch, false));
        assert!(inbox.take(&mut batch, false), "open and empty");
        assert_eq!(inbox.push(|seq| seq), Some(8));
        inbox.close();
        assert_eq!(inbox.push(|seq| seq), None);
        assert!(inbox.take(&mut batch, true));
        assert_eq!(batch, vec![7, 8]);
        assert!(!inbox.take(&mut batch, true));
    }

    #[test]
    fn a_timed_take_returns_empty_handed_then_sees_the_close() {
        let inbox: Inbox<u64> = Inbox::new(1);
        let mut batch = Vec::new();
        let started = std::time::Instant::now();
        assert!(inbox.take_timeout(&mut batch, std::time::Duration::from_millis(20)));
        assert!(batch.is_empty());
        assert!(started.elapsed() >= std::time::Duration::from_millis(20));
        inbox.push(|seq| seq);
        assert!(inbox.take_timeout(&mut batch, std::time::Duration::from_secs(5)));
        assert_eq!(batch, vec![1]);
        inbox.close();
        assert!(!inbox.take_timeout(&mut batch, std::time::Duration::from_secs(5)));
    }
}

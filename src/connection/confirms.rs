//! Publisher confirms for one channel: which publishes may be acked or must
//! be nacked, sent in order and batched with `multiple=true`. A persistent
//! message stored for durable queues is confirmable only once the message
//! log has synced past it.

use crate::broker::forward::Receipt;
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Default)]
pub struct Confirms {
    /// Sequence number of the last publish (they start at 1).
    published: u64,
    /// Everything up to here has been acked or nacked to the client.
    confirmed: u64,
    /// (publish sequence, log sequence) waiting for the log's sync.
    waiting: VecDeque<(u64, u64)>,
    /// Publishes a queue refused, to be nacked in their turn.
    nacks: VecDeque<u64>,
    /// (publish sequence, answers) of messages forwarded to queues of
    /// other cluster nodes, waiting for those nodes.
    forwarded: VecDeque<(u64, Arc<Receipt>)>,
}

/// One basic.ack or basic.nack to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirm {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
}

impl Confirms {
    /// Numbers the next publish.
    pub fn next(&mut self) -> u64 {
        self.published += 1;
        self.published
    }

    pub fn wait_for_log(&mut self, publish: u64, log_seq: u64) {
        self.waiting.push_back((publish, log_seq));
    }

    pub fn wait_for_nodes(&mut self, publish: u64, receipt: Arc<Receipt>) {
        self.forwarded.push_back((publish, receipt));
    }

    pub fn waiting_for_nodes(&self) -> bool {
        !self.forwarded.is_empty()
    }

    pub fn nack(&mut self, publish: u64) {
        self.nacks.push_back(publish);
    }

    /// The last publish ended in a channel error: it gets neither ack nor
    /// nack (as in RabbitMQ, only the channel.close), so the acks due for
    /// the publishes before it must not cover it.
    pub fn withdraw(&mut self, publish: u64) {
        if publish == self.published && publish > self.confirmed {
            self.published -= 1;
        }
    }

    /// How many publishes have been acked or nacked so far.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    pub fn waiting_for_log(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// How many publishes are not yet confirmed.
    #[cfg(test)]
    pub fn outstanding(&self) -> u64 {
        self.published - self.confirmed
    }

    /// The confirms that can go out now, given the log decided everything
    /// up to `synced`, of which `failed` tells what it could not store
    /// (those are nacked).
    pub fn flush(&mut self, synced: u64, failed: impl Fn(u64) -> bool) -> Vec<Confirm> {
        while let Some(&(publish, seq)) = self.waiting.front().filter(|(_, seq)| *seq <= synced) {
            self.waiting.pop_front();
            if failed(seq) {
                // In publish order among the refused ones.
                let at = self.nacks.partition_point(|n| *n < publish);
                if self.nacks.get(at) != Some(&publish) {
                    self.nacks.insert(at, publish);
                }
            }
        }
        while let Some(refused) = self.forwarded.front().and_then(|(_, r)| r.outcome()) {
            if let Some((publish, _)) = self.forwarded.pop_front() {
                if refused {
                    let at = self.nacks.partition_point(|n| *n < publish);
                    if self.nacks.get(at) != Some(&publish) {
                        self.nacks.insert(at, publish);
                    }
                }
            }
        }
        let limit = self.waiting.front().map_or(self.published, |(p, _)| p - 1);
        let limit = self
            .forwarded
            .front()
            .map_or(limit, |(p, _)| limit.min(p - 1));
        let mut out = Vec::new();
        while self.confirmed < limit {
            match self.nacks.front().copied().filter(|n| *n <= limit) {
                Some(nack) => {
                    if nack > self.confirmed + 1 {
                        out.push(Confirm::Ack {
                            tag: nack - 1,
                            multiple: nack - 1 > self.confirmed + 1,
                        });
                    }
                    out.push(Confirm::Nack {
                        tag: nack,
                        multiple: false,
                    });
                    self.nacks.pop_front();
                    self.confirmed = nack;
                }
                None => {
                    out.push(Confirm::Ack {
                        tag: limit,
                        multiple: limit > self.confirmed + 1,
                    });
                    self.confirmed = limit;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_wait_for_the_log_and_keep_order_with_nacks() {
        let mut c = Confirms::default();
        let one = c.next();
        let two = c.next();
        c.wait_for_log(two, 10);
        let three = c.next();
        c.nack(three);
        let _four = c.next();
        // Publish 2 is not synced: only 1 goes.
        assert_eq!(
            c.flush(9, |_| false),
            vec![Confirm::Ack {
                tag: one,
                multiple: false
            }]
        );
        // Synced: 2 acked, 3 nacked, 4 acked.
        assert_eq!(
            c.flush(10, |_| false),
            vec![
                Confirm::Ack {
                    tag: 2,
                    multiple: false
                },
                Confirm::Nack {
                    tag: 3,
                    multiple: false
                },
                Confirm::Ack {
                    tag: 4,
                    multiple: false
                },
            ]
        );
        assert_eq!(c.outstanding(), 0);
        for _ in 0..5 {
            c.next();
        }
        assert_eq!(
            c.flush(10, |_| false),
            vec![Confirm::Ack {
                tag: 9,
                multiple: true
            }]
        );
    }

    #[test]
    fn a_withdrawn_publish_is_not_covered_by_the_acks_before_it() {
        let mut c = Confirms::default();
        c.next();
        c.next();
        let failed = c.next();
        c.withdraw(failed);
        assert_eq!(
            c.flush(0, |_| false),
            vec![Confirm::Ack {
                tag: 2,
                multiple: true
            }]
        );
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn publishes_the_log_could_not_store_are_nacked_in_order() {
        let mut c = Confirms::default();
        let one = c.next();
        c.wait_for_log(one, 5);
        let two = c.next();
        c.nack(two);
        let three = c.next();
        c.wait_for_log(three, 6);
        // Log sequence 5 failed, 6 was stored.
        assert_eq!(
            c.flush(6, |seq| seq == 5),
            vec![
                Confirm::Nack {
                    tag: 1,
                    multiple: false
                },
                Confirm::Nack {
                    tag: 2,
                    multiple: false
                },
                Confirm::Ack {
                    tag: 3,
                    multiple: false
                },
            ]
        );
        assert_eq!(c.outstanding(), 0);
    }
}

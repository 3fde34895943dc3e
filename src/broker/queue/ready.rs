//! The ready messages of a queue: one FIFO, or one per priority level for a
//! priority queue (highest level first, FIFO within a level). Requeued
//! messages go back to their original position (by sequence number).

use super::QueuedMessage;
use std::collections::VecDeque;

pub struct Ready {
    /// Index = priority level; a plain queue has one level.
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: usize,
}

impl Ready {
    pub fn new(max_priority: Option<u8>) -> Self {
        let levels = max_priority.map_or(1, |p| p as usize + 1);
        Ready {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
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

    fn level_of(&self, message: &QueuedMessage) -> usize {
        let priority = message.message.properties.priority().unwrap_or(0) as usize;
        priority.min(self.levels.len() - 1)
    }

    pub fn push_back(&mut self, message: QueuedMessage) {
        let level = self.level_of(&message);
        self.len += 1;
        self.bytes += message.message.body_size();
        self.levels[level].push_back(message);
    }

    /// Puts a message back where its sequence number says.
    pub fn insert_by_seq(&mut self, message: QueuedMessage) {
        let level = self.level_of(&message);
        self.len += 1;
        self.bytes += message.message.body_size();
        let queue = &mut self.levels[level];
        let pos = queue.partition_point(|m| m.seq < message.seq);
        queue.insert(pos, message);
    }

    pub fn front(&self) -> Option<&QueuedMessage> {
        self.levels.iter().rev().find_map(|l| l.front())
    }

    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let message = self.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        self.len -= 1;
        self.bytes -= message.message.body_size();
        Some(message)
    }

    /// The oldest message of the lowest level: what drop-head overflow drops.
    pub fn pop_oldest_lowest(&mut self) -> Option<QueuedMessage> {
        let message = self.levels.iter_mut().find_map(|l| l.pop_front())?;
        self.len -= 1;
        self.bytes -= message.message.body_size();
        Some(message)
    }

    /// Takes every message out.
    pub fn drain(&mut self) -> Vec<QueuedMessage> {
        let mut all = Vec::with_capacity(self.len);
        for level in self.levels.iter_mut().rev() {
            all.extend(level.drain(..));
        }
        self.len = 0;
        self.bytes = 0;
        all
    }
}

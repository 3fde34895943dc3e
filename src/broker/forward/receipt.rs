//! What a publisher's confirm waits for when its message was forwarded to
//! other nodes: their answers.

use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Receipt {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Forwards not answered yet.
    pending: usize,
    /// Some node refused it, or could not be reached.
    refused: bool,
    /// Told when the last answer arrives (the publisher's connection).
    waker: Option<Arc<Notify>>,
}

impl Receipt {
    pub(super) fn expect_one(&self) {
        self.state.lock().pending += 1;
    }

    /// One node answered (`refused`: it did not take the message).
    pub(super) fn answered(&self, refused: bool) {
        let mut state = self.state.lock();
        state.pending = state.pending.saturating_sub(1);
        state.refused |= refused;
        if state.pending == 0 {
            if let Some(waker) = state.waker.take() {
                waker.notify_one();
            }
        }
    }

    /// Wakes `waker` once every answer is in (at once if they are).
    pub fn wake(&self, waker: &Arc<Notify>) {
        let mut state = self.state.lock();
        if state.pending == 0 {
            waker.notify_one();
        } else {
            state.waker = Some(waker.clone());
        }
    }

    /// `None` while answers are missing; then whether it was refused.
    pub fn outcome(&self) -> Option<bool> {
        let state = self.state.lock();
        (state.pending == 0).then_some(state.refused)
    }
}

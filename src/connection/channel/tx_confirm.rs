//! Publisher confirms (confirm.select and the acks/nacks they owe) and
//! transactions (tx.select/commit/rollback) on a channel. Both may wait
//! for the message log to sync: `flush_confirms` sends what is due.

use super::consume::settle;
use super::{ok, unimplemented, unknown_tag, Channel};
use crate::broker::forward::Receipt;
use crate::broker::queue::Settle;
use crate::connection::confirms::Confirm;
use crate::connection::publish::Assembled;
use crate::connection::ConnContext;
use crate::protocol::error::code;
use crate::protocol::{AMQPClass, AmqpError};
use amq_protocol::protocol::{basic, confirm, tx};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// What to do with acks inside a transaction.
pub(super) enum TxAck {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

#[derive(Default)]
pub(super) struct Transaction {
    pub(super) publishes: Vec<Assembled>,
    pub(super) acks: Vec<TxAck>,
}

impl Channel {
    /// confirm.select
    pub(super) fn handle_confirm(
        &mut self,
        method: confirm::AMQPMethod,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        use AMQPClass as C;
        match method {
            confirm::AMQPMethod::Select(m) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirm = true;
                self.delivery.stats.confirm_mode.store(true, Relaxed);
                Ok(
                    (!m.nowait).then_some(C::Confirm(confirm::AMQPMethod::SelectOk(
                        confirm::SelectOk {},
                    ))),
                )
            }
            other => unimplemented(C::Confirm(other)),
        }
    }

    /// tx.select, tx.commit, tx.rollback
    pub(super) fn handle_tx(
        &mut self,
        ctx: &mut ConnContext,
        method: tx::AMQPMethod,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        use AMQPClass as C;
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirm {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Transaction::default);
                self.delivery.stats.transactional.store(true, Relaxed);
                ok(C::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
            }
            tx::AMQPMethod::Commit(_) => {
                let log_seq = self.commit(ctx)?;
                // As RabbitMQ: commit-ok only once the transaction's
                // persistent messages are on disk (sent by `flush_confirms`).
                let synced = ctx
                    .broker
                    .store
                    .as_ref()
                    .map_or(u64::MAX, |s| *s.log.synced().borrow());
                match log_seq {
                    Some(seq) if seq > synced => {
                        self.commits_waiting.push_back(seq);
                        Ok(None)
                    }
                    Some(seq)
                        if ctx
                            .broker
                            .store
                            .as_ref()
                            .is_some_and(|s| s.log.failures().failed(seq)) =>
                    {
                        Err(not_stored())
                    }
                    _ if !self.commits_waiting.is_empty() => {
                        self.commits_waiting.push_back(0);
                        Ok(None)
                    }
                    _ => ok(C::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
                }
            }
            tx::AMQPMethod::Rollback(_) => {
                let tx = self.tx.as_mut().ok_or_else(not_transactional)?;
                *tx = Transaction::default();
                ok(C::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})))
            }
            other => unimplemented(C::Tx(other)),
        }
    }

    /// Records how publish `seq` (confirm mode) is to be confirmed: nacked
    /// when a queue refused it, acked once the log synced past `log_seq`.
    /// A message forwarded to other cluster nodes is acked once they
    /// answered too (`forwarded`), and nacked if one refused it.
    pub(super) fn confirm_later(
        &mut self,
        ctx: &ConnContext,
        seq: Option<u64>,
        refused: bool,
        log_seq: Option<u64>,
        forwarded: Option<Arc<Receipt>>,
    ) {
        let Some(seq) = seq else { return };
        if refused {
            self.confirms.nack(seq);
            return;
        }
        if let Some(log_seq) = log_seq {
            self.confirms.wait_for_log(seq, log_seq);
        }
        if let Some(receipt) = forwarded {
            receipt.wake(&ctx.remote_answers);
            self.confirms.wait_for_nodes(seq, receipt);
        }
    }

    /// Whether some confirm waits for another node's answer.
    pub fn waiting_for_nodes(&self) -> bool {
        self.confirm && self.confirms.waiting_for_nodes()
    }

    /// The publish being completed failed its checks and closes the
    /// channel: it is not confirmed (see `Confirms::withdraw`).
    pub fn withdraw_failed_publish(&mut self) {
        if let Some(seq) = self.current_publish.take() {
            self.confirms.withdraw(seq);
        }
    }

    /// Whether some confirm or commit-ok waits for the message log.
    pub fn waiting_for_log(&self) -> bool {
        (self.confirm && self.confirms.waiting_for_log()) || !self.commits_waiting.is_empty()
    }

    /// Sends the acks and nacks that are due: everything published and
    /// routed, except what still waits for the message log to sync past
    /// `synced`; likewise the commit-oks. Called once per batch of frames
    /// read and on each sync. What the log could not store (disk full) is
    /// nacked; a transaction of it fails the channel (506, as no
    /// commit-ok may say it is safe).
    pub fn flush_confirms(&mut self, ctx: &ConnContext, synced: u64) -> Result<(), AmqpError> {
        let failures = ctx.broker.store.as_ref().map(|s| s.log.failures());
        let failed = |seq: u64| failures.is_some_and(|f| f.failed(seq));
        while let Some(&seq) = self.commits_waiting.front().filter(|seq| **seq <= synced) {
            self.commits_waiting.pop_front();
            if failed(seq) {
                self.commits_waiting.clear();
                return Err(not_stored());
            }
            ctx.output.method(
                self.id,
                AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
            );
        }
        if !self.confirm {
            return Ok(());
        }
        let confirmed_before = self.confirms.confirmed();
        let due = self.confirms.flush(synced, failed);
        self.count(
            &self.delivery.stats.confirm,
            self.confirms.confirmed() - confirmed_before,
        );
        for confirm in due {
            let method = match confirm {
                Confirm::Ack { tag, multiple } => basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple,
                }),
                Confirm::Nack { tag, multiple } => basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: tag,
                    multiple,
                    requeue: false,
                }),
            };
            ctx.output.method(self.id, AMQPClass::Basic(method));
        }
        Ok(())
    }

    /// Applies the transaction; returns the log sequence its commit-ok
    /// waits for (its last append), if it stored anything.
    fn commit(&mut self, ctx: &mut ConnContext) -> Result<Option<u64>, AmqpError> {
        let tx = self.tx.as_mut().ok_or_else(not_transactional)?;
        let Transaction { publishes, acks } = std::mem::take(tx);
        let mut log_seq = None;
        for message in publishes {
            if let Some(seq) = self.route(ctx, message)? {
                log_seq = log_seq.max(Some(seq));
            }
        }
        let mut first_error = None;
        for ack in acks {
            let (tag, multiple, how) = match ack {
                TxAck::Ack { tag, multiple } => (tag, multiple, Settle::Ack),
                TxAck::Nack {
                    tag,
                    multiple,
                    requeue,
                } => (tag, multiple, Settle::nack(requeue)),
            };
            match self.delivery.take(tag, multiple) {
                Ok(taken) => {
                    if matches!(how, Settle::Ack) {
                        self.count(&self.delivery.stats.ack, taken.len() as u64);
                    }
                    settle(taken, how)
                }
                Err(tag) => {
                    first_error.get_or_insert(unknown_tag(tag));
                }
            }
        }
        self.after_credit_returned(ctx);
        first_error.map_or(Ok(log_seq), Err)
    }
}

fn not_transactional() -> AmqpError {
    AmqpError::precondition_failed("channel is not transactional")
}

/// A transaction whose messages the log could not write (disk full).
fn not_stored() -> AmqpError {
    AmqpError::channel(
        code::RESOURCE_ERROR,
        "transaction not committed: the message store could not write it (disk full?)",
    )
}

//! Replies that promise a durable definition (exchange.declare-ok,
//! queue.declare-ok, bind-ok, delete-ok...) go out once the catalog has
//! flushed the change the method made (see `store::catalog`), without
//! holding up the connection's other channels or its worker.

use super::Channel;
use crate::connection::ConnContext;
use crate::protocol::{AMQPClass, AmqpError};

impl Channel {
    /// Runs an exchange or queue method; its reply waits for the catalog
    /// when the method changed it (and behind any reply already waiting,
    /// so replies keep their order).
    pub(super) fn after_catalog_flush(
        &mut self,
        ctx: &mut ConnContext,
        method: impl FnOnce(&mut Self, &mut ConnContext) -> Result<Option<AMQPClass>, AmqpError>,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let Some(store) = ctx.broker.store.clone() else {
            return method(self, ctx);
        };
        let before = store.catalog.written();
        let reply = method(self, ctx)?;
        let written = store.catalog.written();
        match reply {
            Some(reply) if written > before || !self.catalog_waiting.is_empty() => {
                // Another connection's change may count here too: then
                // this waits for one flush more than it needs.
                self.catalog_waiting.push_back((written, reply));
                Ok(None)
            }
            reply => Ok(reply),
        }
    }

    /// Whether a reply waits for the catalog.
    pub fn waiting_for_catalog(&self) -> bool {
        !self.catalog_waiting.is_empty()
    }

    /// Sends the replies whose changes the catalog has flushed (`flushed`).
    pub fn flush_catalog_replies(&mut self, ctx: &ConnContext, flushed: u64) {
        while let Some((_, reply)) = self
            .catalog_waiting
            .pop_front_if(|(seq, _)| *seq <= flushed)
        {
            ctx.output.method(self.id, reply);
        }
    }
}

//! Permission checks, as RabbitMQ makes them: the user's configure, write
//! and read regular expressions for the vhost, matched (unanchored)
//! against the queue or exchange name; `""` grants nothing. Tags do not
//! bypass them: an administrator without a matching pattern is refused
//! too. Used by AMQP channels and by the management API, which acts as
//! its caller (RabbitMQ's management runs each operation as that user).
//!
//! The expressions are compiled when first needed, and granted checks are
//! remembered for the life of the `Access` (a channel's: RabbitMQ's
//! channels cache them too), so the publish path matches a regex only for
//! an exchange it has not published to before.

use crate::broker::arguments;
use crate::broker::Broker;
use crate::protocol::{AmqpError, FieldTable};
use regex::Regex;
use std::collections::HashSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Queue,
    Exchange,
}

/// Most granted checks remembered per channel.
const CACHE_LIMIT: usize = 1024;

pub struct Access {
    user: String,
    vhost: String,
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
    /// Granted names per (permission, kind), looked up without allocating
    /// (the publish path checks every message).
    granted: [HashSet<String>; 6],
    /// The last granted check: a publisher repeats the same one per message.
    last: Option<(usize, String)>,
}

fn compile(pattern: &str, user: &str) -> Option<Regex> {
    if pattern.is_empty() {
        return None;
    }
    match Regex::new(pattern) {
        Ok(re) => Some(re),
        Err(e) => {
            tracing::warn!(
                user,
                pattern,
                "permission pattern does not compile, nothing granted: {e}"
            );
            None
        }
    }
}

impl Access {
    pub fn load(broker: &Broker, user: &str, vhost: &str) -> Access {
        let users = broker.users.read();
        let permission = users.permission(user, vhost);
        let pattern = |f: fn(&crate::broker::users::Permission) -> &str| {
            permission.and_then(|p| compile(f(p), user))
        };
        Access {
            user: user.to_string(),
            vhost: vhost.to_string(),
            configure: pattern(|p| &p.configure),
            write: pattern(|p| &p.write),
            read: pattern(|p| &p.read),
            granted: Default::default(),
            last: None,
        }
    }

    /// 403 `access to queue 'q' in vhost 'v' refused for user 'u'` unless
    /// granted. The default exchange is checked as `amq.default`.
    pub fn check(&mut self, perm: Perm, kind: Kind, name: &str) -> Result<(), AmqpError> {
        let name = if kind == Kind::Exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let slot = perm as usize * 2 + kind as usize;
        if self
            .last
            .as_ref()
            .is_some_and(|(s, n)| *s == slot && n == name)
        {
            return Ok(());
        }
        if self.granted[slot].contains(name) {
            self.last = Some((slot, name.to_string()));
            return Ok(());
        }
        let pattern = match perm {
            Perm::Configure => &self.configure,
            Perm::Write => &self.write,
            Perm::Read => &self.read,
        };
        if pattern.as_ref().is_some_and(|re| re.is_match(name)) {
            if self.granted[slot].len() < CACHE_LIMIT {
                self.granted[slot].insert(name.to_string());
            }
            return Ok(());
        }
        let what = match kind {
            Kind::Queue => "queue",
            Kind::Exchange => "exchange",
        };
        Err(AmqpError::access_refused(format!(
            "access to {what} '{name}' in vhost '{}' refused for user '{}'",
            self.vhost, self.user
        )))
    }

    /// The checks of a (not passive) queue.declare: configure on the
    /// queue; with `x-dead-letter-exchange`, also read on the queue and
    /// write on that exchange.
    pub fn check_queue_declare(
        &mut self,
        name: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        self.check(Perm::Configure, Kind::Queue, name)?;
        if let Some(dlx) =
            arguments::get(arguments, "x-dead-letter-exchange").and_then(arguments::as_string)
        {
            self.check(Perm::Read, Kind::Queue, name)?;
            self.check(Perm::Write, Kind::Exchange, &dlx)?;
        }
        Ok(())
    }

    /// The checks of a (not passive) exchange.declare: configure on the
    /// exchange; with `alternate-exchange`, also read on the exchange and
    /// write on the alternate one.
    pub fn check_exchange_declare(
        &mut self,
        name: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        self.check(Perm::Configure, Kind::Exchange, name)?;
        if let Some(ae) =
            arguments::get(arguments, "alternate-exchange").and_then(arguments::as_string)
        {
            self.check(Perm::Read, Kind::Exchange, name)?;
            self.check(Perm::Write, Kind::Exchange, &ae)?;
        }
        Ok(())
    }
}

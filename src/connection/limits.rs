//! Connection limits: the node's total (`amqp.max_connections`), per vhost
//! and per user (`[limits]`), checked at `connection.open` as RabbitMQ
//! does, with its refusal texts (530 NOT_ALLOWED).
//!
//! The counts are taken and checked under one lock, so two clients opening
//! at the same moment cannot both take the last slot. A slot is held by an
//! [`Admitted`] and given back when it is dropped.

use crate::config::Config;
use crate::protocol::AmqpError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct ConnectionLimits {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: u32,
    users: HashMap<String, u32>,
    vhosts: HashMap<String, u32>,
}

/// One open connection's slot in the counts.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    user: String,
    vhost: String,
}

fn over(count: u32, limit: Option<u32>) -> Option<u32> {
    limit.filter(|limit| count >= *limit)
}

impl ConnectionLimits {
    pub fn new() -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits::default())
    }

    /// Takes a slot for `user` on `vhost`, or refuses as RabbitMQ does:
    /// the node limit first, then the vhost's, then the user's.
    pub fn admit(
        self: &Arc<Self>,
        config: &Config,
        user: &str,
        vhost: &str,
    ) -> Result<Admitted, AmqpError> {
        let mut counts = self.counts.lock();
        if let Some(limit) = over(counts.total, config.amqp.max_connections) {
            return Err(AmqpError::not_allowed(format!(
                "connection refused: node connection limit ({limit}) is reached"
            ))
            .on(10, 40));
        }
        let in_vhost = counts.vhosts.get(vhost).copied().unwrap_or(0);
        if let Some(limit) = over(in_vhost, config.limits.vhost_max_connections(vhost)) {
            return Err(AmqpError::not_allowed(format!(
                "access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"
            ))
            .on(10, 40));
        }
        let of_user = counts.users.get(user).copied().unwrap_or(0);
        if let Some(limit) = over(of_user, config.limits.user_max_connections(user)) {
            return Err(AmqpError::not_allowed(format!(
                "Connection refused for user '{user}': user connection limit ({limit}) is reached"
            ))
            .on(10, 40));
        }
        counts.total += 1;
        *counts.vhosts.entry(vhost.to_string()).or_default() += 1;
        *counts.users.entry(user.to_string()).or_default() += 1;
        Ok(Admitted {
            limits: self.clone(),
            user: user.to_string(),
            vhost: vhost.to_string(),
        })
    }

    /// Connections holding a slot.
    pub fn total(&self) -> u32 {
        self.counts.lock().total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut guard = self.limits.counts.lock();
        let counts = &mut *guard;
        counts.total = counts.total.saturating_sub(1);
        for (map, key) in [
            (&mut counts.users, &self.user),
            (&mut counts.vhosts, &self.vhost),
        ] {
            if let Some(n) = map.get_mut(key.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back() {
        let mut config = Config::default();
        config.amqp.max_connections = Some(2);
        config.limits.max_connections_per_user = Some(1);
        let limits = ConnectionLimits::new();
        let a = limits.admit(&config, "a", "/").ok();
        assert!(a.is_some());
        let refused = limits.admit(&config, "a", "/").err().map(|e| e.text);
        assert_eq!(
            refused.as_deref(),
            Some("NOT_ALLOWED - Connection refused for user 'a': user connection limit (1) is reached")
        );
        let b = limits.admit(&config, "b", "/").ok();
        assert!(b.is_some());
        let refused = limits.admit(&config, "c", "/").err().map(|e| e.text);
        assert_eq!(
            refused.as_deref(),
            Some("NOT_ALLOWED - connection refused: node connection limit (2) is reached")
        );
        drop(a);
        assert!(limits.admit(&config, "a", "/").is_ok());
        assert_eq!(limits.total(), 1);
    }
}

//! Policies and operator policies, applied to queues and exchanges.

use super::*;

/// The catalog tree of policies. A change goes through the catalog's
/// `put_raw` / `remove_raw`: its log makes it durable, and the HTTP API's
/// answer waits for that.
const POLICY_TREE: &str = "policies";

/// Why a policy was not put.
#[derive(Debug)]
pub enum PolicyError {
    /// RabbitMQ's validation text.
    Invalid(String),
    /// The cluster could not commit it.
    Unavailable(AmqpError),
}

impl VHost {
    pub fn policies(&self) -> Vec<Arc<Policy>> {
        self.policies.read().clone()
    }

    /// Adds or replaces a policy and applies it at once (on a cluster, on
    /// every node). Returns whether it is new.
    pub fn put_policy(&self, mut record: PolicyRecord) -> Result<bool, PolicyError> {
        record.vhost = self.name.clone();
        // Refused here before anything is proposed.
        Policy::new(record.clone()).map_err(PolicyError::Invalid)?;
        let what = format!("put policy '{}' in vhost '{}'", record.name, self.name);
        match self
            .replication
            .replicate(&Change::PutPolicy(record.clone()), &what)
        {
            Some(outcome) => outcome
                .and_then(|o| o.into_result())
                .map_err(PolicyError::Unavailable),
            None => self.apply_put_policy(record).map_err(PolicyError::Invalid),
        }
    }

    /// Removes a policy (on a cluster, on every node); returns whether it
    /// existed.
    pub fn delete_policy(&self, name: &str) -> Result<bool, AmqpError> {
        let what = format!("delete policy '{name}' in vhost '{}'", self.name);
        let change = Change::DeletePolicy {
            vhost: self.name.clone(),
            name: name.to_string(),
        };
        self.replication
            .commit(&change, &what, || Ok(self.apply_delete_policy(name)))
    }

    /// The policy put on this node; the error is RabbitMQ's validation
    /// text.
    pub(crate) fn apply_put_policy(&self, mut record: PolicyRecord) -> Result<bool, String> {
        record.vhost = self.name.clone();
        let policy = Arc::new(Policy::new(record)?);
        let created = {
            let mut policies = self.policies.write();
            let before = policies.len();
            policies.retain(|p| p.name() != policy.name());
            let created = policies.len() == before;
            policies.push(policy.clone());
            created
        };
        if let Some(store) = &self.store {
            match serde_json::to_vec(&policy.record) {
                Ok(json) => {
                    let key = policy_key(&self.name, policy.name());
                    store.catalog.put_raw(POLICY_TREE, &key, &json);
                }
                Err(e) => tracing::error!("policy not storable: {e}"),
            }
        }
        self.apply_policies();
        Ok(created)
    }

    /// The policy removed on this node.
    pub(crate) fn apply_delete_policy(&self, name: &str) -> bool {
        let existed = {
            let mut policies = self.policies.write();
            let before = policies.len();
            policies.retain(|p| p.name() != name);
            policies.len() != before
        };
        if existed {
            if let Some(store) = &self.store {
                store
                    .catalog
                    .remove_raw(POLICY_TREE, &policy_key(&self.name, name));
            }
            self.apply_policies();
        }
        existed
    }

    pub(super) fn policy_for_queue(&self, name: &str) -> Option<Arc<Policy>> {
        policy::select(&self.policies.read(), |p| p.applies_to_queue(name)).cloned()
    }

    pub fn policy_for_exchange(&self, name: &str) -> Option<Arc<Policy>> {
        policy::select(&self.policies.read(), |p| p.applies_to_exchange(name)).cloned()
    }

    /// Re-evaluates which policy applies to every queue and exchange.
    fn apply_policies(&self) {
        for queue in self.queues() {
            queue.apply_policy(self.policy_for_queue(&queue.name));
        }
        for exchange in self.exchanges() {
            exchange.set_policy(self.policy_for_exchange(&exchange.name));
        }
    }

    fn policy_tree(&self) -> Option<sled::Tree> {
        let store = self.store.as_ref()?;
        store
            .catalog
            .tree(POLICY_TREE)
            .map_err(|e| tracing::error!("cannot open the policies tree: {e:#}"))
            .ok()
    }

    /// This vhost's policies from the catalog (at start).
    pub(super) fn stored_policies(&self) -> Vec<Arc<Policy>> {
        let Some(tree) = self.policy_tree() else {
            return Vec::new();
        };
        let prefix = policy_key(&self.name, "");
        tree.scan_prefix(&prefix)
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| serde_json::from_slice::<PolicyRecord>(&v).ok())
            .filter_map(|r| match Policy::new(r) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    tracing::error!("skipping stored policy: {e}");
                    None
                }
            })
            .collect()
    }
}

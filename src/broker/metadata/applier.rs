//! The broker as the metadata group's state machine: every node applies
//! each committed [`Change`] to its own broker, and a node that fell behind
//! a snapshot takes the definitions whole.

use super::{Change, Outcome};
use crate::broker::policy::PolicyRecord;
use crate::broker::users::{Permission, User};
use crate::broker::Broker;
use crate::protocol::FieldTable;
use crate::store::catalog::VhostRecord;
use serde::{Deserialize, Serialize};
use std::sync::Weak;

pub struct BrokerApplier {
    broker: Weak<Broker>,
}

impl BrokerApplier {
    pub fn new(broker: Weak<Broker>) -> BrokerApplier {
        BrokerApplier { broker }
    }
}

/// The shared definitions, whole (what a snapshot holds).
#[derive(Default, Serialize, Deserialize)]
struct Definitions {
    vhosts: Vec<VhostRecord>,
    users: Vec<User>,
    permissions: Vec<(String, String, Permission)>,
    /// (vhost, name, type, durable, auto-delete, internal, arguments) of
    /// the exchanges declared by clients (not the predeclared ones).
    exchanges: Vec<(String, String, String, bool, bool, bool, FieldTable)>,
    policies: Vec<PolicyRecord>,
}

fn declared(name: &str) -> bool {
    !name.is_empty() && !name.starts_with("amq.")
}

impl crate::cluster::Applier for BrokerApplier {
    /// The catalog's flush thread has written what was applied so far.
    fn persisted(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let store = self.broker.upgrade().and_then(|b| b.store.clone());
        Box::pin(async move {
            if let Some(store) = store {
                store.catalog.wait_flushed().await;
            }
        })
    }

    fn apply(&self, command: &[u8]) -> Vec<u8> {
        let Some(broker) = self.broker.upgrade() else {
            return Vec::new();
        };
        match serde_json::from_slice::<Change>(command) {
            Ok(change) => change.apply(&broker).encode(),
            Err(e) => {
                // Written by a newer node, perhaps: skipped here, said loudly.
                tracing::error!("metadata change not understood, skipped: {e}");
                Outcome::Done { created: false }.encode()
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let Some(broker) = self.broker.upgrade() else {
            return Vec::new();
        };
        let mut definitions = Definitions::default();
        for vhost in broker.vhosts() {
            if let Some(record) = broker.vhost_record(&vhost.name) {
                definitions.vhosts.push(record);
            }
            definitions
                .policies
                .extend(vhost.policies().iter().map(|p| p.record.clone()));
            for x in vhost.exchanges() {
                if declared(&x.name) {
                    definitions.exchanges.push((
                        vhost.name.clone(),
                        x.name.clone(),
                        x.type_name().to_string(),
                        x.durable,
                        x.auto_delete,
                        x.internal,
                        x.arguments.clone(),
                    ));
                }
            }
        }
        {
            let users = broker.users.read();
            definitions.users = users.list();
            definitions.permissions = users.permissions();
        }
        serde_json::to_vec(&definitions).unwrap_or_default()
    }

    fn install(&self, snapshot: &[u8]) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let definitions: Definitions = match serde_json::from_slice(snapshot) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("metadata snapshot not understood, not installed: {e}");
                return;
            }
        };
        let mut changes = Vec::new();
        // What the snapshot no longer has goes first...
        for vhost in broker.vhosts() {
            if !definitions.vhosts.iter().any(|v| v.name == vhost.name) {
                changes.push(Change::DeleteVhost {
                    name: vhost.name.clone(),
                });
                continue;
            }
            for p in vhost.policies() {
                let kept = definitions
                    .policies
                    .iter()
                    .any(|r| r.vhost == vhost.name && r.name == p.name());
                if !kept {
                    changes.push(Change::DeletePolicy {
                        vhost: vhost.name.clone(),
                        name: p.name().to_string(),
                    });
                }
            }
            for x in vhost.exchanges() {
                let kept = definitions
                    .exchanges
                    .iter()
                    .any(|e| e.0 == vhost.name && e.1 == x.name);
                if declared(&x.name) && !kept {
                    changes.push(Change::DeleteExchange {
                        vhost: vhost.name.clone(),
                        name: x.name.clone(),
                        if_unused: false,
                    });
                }
            }
        }
        for user in broker.users.read().list() {
            if !definitions.users.iter().any(|u| u.name == user.name) {
                changes.push(Change::DeleteUser { name: user.name });
            }
        }
        // ...then everything it has, put again (a put of what is already
        // there changes nothing).
        changes.extend(definitions.vhosts.into_iter().map(Change::PutVhost));
        changes.extend(definitions.users.into_iter().map(Change::PutUser));
        for (user, vhost, permission) in definitions.permissions {
            changes.push(Change::SetPermission {
                user,
                vhost,
                permission,
            });
        }
        for (vhost, name, kind, durable, auto_delete, internal, arguments) in definitions.exchanges
        {
            // An exchange whose type or flags differ is made again.
            let differs = broker
                .vhost(&vhost)
                .and_then(|v| v.exchange(&name))
                .is_some_and(|x| {
                    x.type_name() != kind
                        || x.durable != durable
                        || x.auto_delete != auto_delete
                        || x.internal != internal
                        || x.arguments != arguments
                });
            if differs {
                changes.push(Change::DeleteExchange {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    if_unused: false,
                });
            }
            changes.push(Change::DeclareExchange {
                vhost,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            });
        }
        changes.extend(definitions.policies.into_iter().map(Change::PutPolicy));
        for change in changes {
            change.apply(&broker);
        }
    }
}

//! The broker as the metadata group's state machine: every node applies
//! each committed [`Change`] to its own broker, and a node that fell behind
//! a snapshot takes the definitions whole.

use super::{Change, Outcome};
use crate::broker::exchange::Destination;
use crate::broker::policy::PolicyRecord;
use crate::broker::users::{Permission, User};
use crate::broker::Broker;
use crate::protocol::FieldTable;
use crate::store::catalog::{BindingRecord, QueueRecord, VhostRecord};
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
    /// The cluster's queues (durable, not exclusive), each with its node.
    #[serde(default)]
    queues: Vec<QueueRecord>,
    /// Bindings to those queues, and between exchanges.
    #[serde(default)]
    bindings: Vec<BindingRecord>,
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
                Outcome::Done {
                    created: false,
                    count: 0,
                }
                .encode()
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
            for q in vhost.queues() {
                if q.is_shared() {
                    definitions.queues.push(QueueRecord {
                        vhost: vhost.name.clone(),
                        name: q.name.clone(),
                        auto_delete: q.options.auto_delete,
                        arguments: q.options.arguments.clone(),
                        node: q
                            .remote_node()
                            .or(broker.replication.node())
                            .map(str::to_string),
                        durable: q.options.durable,
                        exclusive: q.is_exclusive(),
                    });
                }
            }
            for x in vhost.exchanges() {
                definitions
                    .bindings
                    .extend(shared_bindings(&vhost.name, &x.name, x.bindings()));
                if !x.is_predeclared() {
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
            for q in vhost.queues() {
                let kept = definitions
                    .queues
                    .iter()
                    .any(|r| r.vhost == vhost.name && r.name == q.name);
                if q.is_shared() && !kept {
                    changes.push(Change::DeleteQueue {
                        vhost: vhost.name.clone(),
                        name: q.name.clone(),
                    });
                }
            }
            for x in vhost.exchanges() {
                for binding in shared_bindings(&vhost.name, &x.name, x.bindings()) {
                    if !definitions.bindings.contains(&binding) {
                        changes.push(Change::Unbind(binding));
                    }
                }
            }
            for x in vhost.exchanges() {
                let kept = definitions
                    .exchanges
                    .iter()
                    .any(|e| e.0 == vhost.name && e.1 == x.name);
                if !x.is_predeclared() && !kept {
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
        for q in definitions.queues {
            // A queue that lives elsewhere now, or was made again with
            // other arguments, is made again.
            let differs = broker
                .vhost(&q.vhost)
                .and_then(|v| v.queue(&q.name))
                .is_some_and(|existing| {
                    existing.options.arguments != q.arguments
                        || existing.options.auto_delete != q.auto_delete
                        || existing.remote_node().or(broker.replication.node()) != q.node.as_deref()
                });
            if differs {
                changes.push(Change::DeleteQueue {
                    vhost: q.vhost.clone(),
                    name: q.name.clone(),
                });
            }
            changes.push(Change::DeclareQueue {
                record: q,
                owner: None,
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
                // A super stream's partitions are among the queues, put
                // before the exchanges.
                home: None,
            });
        }
        changes.extend(definitions.policies.into_iter().map(Change::PutPolicy));
        changes.extend(definitions.bindings.into_iter().map(Change::Bind));
        for change in changes {
            change.apply(&broker);
        }
    }
}

/// The bindings of exchange `source` that are the cluster's: to its
/// queues, and to other exchanges.
fn shared_bindings(
    vhost: &str,
    source: &str,
    bindings: Vec<crate::broker::exchange::Binding>,
) -> Vec<BindingRecord> {
    bindings
        .into_iter()
        .filter_map(|b| {
            let (destination, to_queue) = match &b.destination {
                Destination::Queue(q) if q.is_shared() => (q.name.clone(), true),
                Destination::Queue(_) => return None,
                Destination::Exchange(x) => (x.clone(), false),
            };
            Some(BindingRecord {
                vhost: vhost.to_string(),
                source: source.to_string(),
                destination,
                destination_is_queue: to_queue,
                routing_key: b.routing_key,
                arguments: b.arguments,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Applier;
    use crate::config::Config;
    use crate::store::catalog::VhostRecord;
    use std::sync::Arc;

    fn declare(broker: &Broker, vhost: &str, name: &str, kind: &str) {
        // Through the change itself: this module must not import the
        // vhost (which imports it).
        let change = Change::DeclareExchange {
            vhost: vhost.into(),
            name: name.into(),
            kind: kind.into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
            home: None,
        };
        change.apply(broker).into_result().expect("declare");
    }

    fn policy(vhost: &str, name: &str) -> PolicyRecord {
        serde_json::from_value(serde_json::json!({
            "vhost": vhost, "name": name, "pattern": "^x", "apply-to": "queues",
            "definition": {"message-ttl": 1000}, "priority": 0,
        }))
        .expect("policy record")
    }

    /// Names of the declared exchanges of every vhost, with their types.
    fn exchanges(broker: &Broker) -> Vec<(String, String, String)> {
        let mut all: Vec<_> = broker
            .vhosts()
            .iter()
            .flat_map(|v| {
                v.exchanges()
                    .into_iter()
                    .filter(|x| !x.is_predeclared())
                    .map(|x| (v.name.clone(), x.name.clone(), x.type_name().to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }

    fn users(broker: &Broker) -> Vec<String> {
        let mut names: Vec<String> = broker
            .users
            .read()
            .list()
            .into_iter()
            .map(|u| u.name)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_installed_on_another_broker_makes_its_definitions_the_same() {
        let source = Broker::new(Config::default(), None);
        source
            .put_vhost(VhostRecord {
                name: "shop".into(),
                ..Default::default()
            })
            .expect("vhost");
        source
            .put_user(User::with_password("ann", "pw", vec!["management".into()]))
            .expect("user");
        source
            .set_permission(
                "ann",
                "shop",
                Permission {
                    configure: "^ann-".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                },
            )
            .expect("permission");
        declare(&source, "shop", "orders", "topic");
        declare(&source, "/", "events", "fanout");
        declare(&source, "/", "retyped", "direct");
        source
            .vhost("/")
            .expect("vhost")
            .put_policy(policy("/", "ttl"))
            .expect("policy");

        // The target has things the snapshot does not, and one exchange of
        // the same name with another type.
        let target = Broker::new(Config::default(), None);
        target
            .put_vhost(VhostRecord {
                name: "stale".into(),
                ..Default::default()
            })
            .expect("vhost");
        target
            .put_user(User::with_password("bob", "pw", vec![]))
            .expect("user");
        declare(&target, "/", "old", "direct");
        declare(&target, "/", "retyped", "topic");
        target
            .vhost("/")
            .expect("vhost")
            .put_policy(policy("/", "stale-policy"))
            .expect("policy");

        let snapshot = BrokerApplier::new(Arc::downgrade(&source)).snapshot();
        BrokerApplier::new(Arc::downgrade(&target)).install(&snapshot);

        assert_eq!(exchanges(&target), exchanges(&source));
        assert!(exchanges(&target).contains(&("/".into(), "retyped".into(), "direct".into())));
        assert_eq!(users(&target), users(&source));
        assert!(target.vhost("stale").is_none());
        assert_eq!(
            target
                .users
                .read()
                .permission("ann", "shop")
                .map(|p| p.configure.clone()),
            Some("^ann-".to_string())
        );
        let policies: Vec<String> = target
            .vhost("/")
            .expect("vhost")
            .policies()
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        assert_eq!(policies, ["ttl"]);
    }

    #[test]
    fn a_change_applied_twice_leaves_the_same_state() {
        let broker = Broker::new(Config::default(), None);
        let applier = BrokerApplier::new(Arc::downgrade(&broker));
        let change = serde_json::to_vec(&Change::DeclareExchange {
            vhost: "/".into(),
            name: "twice".into(),
            kind: "topic".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
            home: None,
        })
        .expect("encode");
        let first = Outcome::decode(&applier.apply(&change));
        let second = Outcome::decode(&applier.apply(&change));
        assert!(
            matches!(first, Outcome::Done { created: true, .. }),
            "{first:?}"
        );
        assert!(
            matches!(second, Outcome::Done { created: false, .. }),
            "{second:?}"
        );
        assert_eq!(
            exchanges(&broker),
            [("/".into(), "twice".into(), "topic".into())]
        );
        // An inequivalent one is refused the same way on every node.
        let other = serde_json::to_vec(&Change::DeclareExchange {
            vhost: "/".into(),
            name: "twice".into(),
            kind: "direct".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
            home: None,
        })
        .expect("encode");
        match Outcome::decode(&applier.apply(&other)).into_result() {
            Err(e) => assert_eq!(
                e.text,
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'twice' in vhost '/': received 'direct' but current is 'topic'"
            ),
            Ok(created) => panic!("applied an inequivalent redeclare: {created}"),
        }
    }
}

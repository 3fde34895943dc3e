//! Applying a shared-definitions change ([`Change`]) on this node: the
//! local half of the broker method that proposed it. Here, beside the
//! vhost, so that `metadata` (the change types and their replication) does
//! not import the vhost that uses it.

use super::ExchangeDeclare;
use crate::broker::metadata::{Change, Outcome};
use crate::broker::Broker;
use crate::protocol::AmqpError;

impl Change {
    /// Applies the change to this node's broker (the local half of the
    /// method that proposed it).
    pub fn apply(self, broker: &Broker) -> Outcome {
        Outcome::of(match self {
            Change::PutVhost(record) => Ok(broker.apply_put_vhost(record)),
            Change::DeleteVhost { name } => Ok(broker.apply_delete_vhost(&name)),
            Change::PutUser(user) => Ok(broker.apply_put_user(user)),
            Change::DeleteUser { name } => Ok(broker.apply_delete_user(&name)),
            Change::SetPermission {
                user,
                vhost,
                permission,
            } => Ok(broker.apply_set_permission(&user, &vhost, permission)),
            Change::ClearPermission { user, vhost } => {
                Ok(broker.apply_clear_permission(&user, &vhost))
            }
            Change::DeclareExchange {
                vhost,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
                home,
            } => match broker.vhost(&vhost) {
                Some(vhost) => vhost
                    .apply_declare_exchange(
                        ExchangeDeclare {
                            name: &name,
                            kind: &kind,
                            passive: false,
                            durable,
                            auto_delete,
                            internal,
                            arguments: &arguments,
                        },
                        home.as_deref(),
                    )
                    .map(|(_, created)| created),
                None => Err(no_vhost(&vhost)),
            },
            Change::DeleteExchange {
                vhost,
                name,
                if_unused,
            } => match broker.vhost(&vhost) {
                Some(vhost) => vhost.apply_delete_exchange(&name, if_unused).map(|_| false),
                None => Err(no_vhost(&vhost)),
            },
            Change::DeclareQueue { record, owner } => match broker.vhost(&record.vhost) {
                Some(vhost) => vhost.apply_declare_queue(&record, owner),
                None => Err(no_vhost(&record.vhost)),
            },
            Change::DeleteQueue { vhost, name } => {
                return Outcome::counted(match broker.vhost(&vhost) {
                    Some(vhost) => Ok(vhost.apply_delete_queue(&name)),
                    None => Err(no_vhost(&vhost)),
                })
            }
            Change::Bind(record) => match broker.vhost(&record.vhost) {
                Some(vhost) => vhost.apply_bind(&record).map(|_| false),
                None => Err(no_vhost(&record.vhost)),
            },
            Change::Unbind(record) => match broker.vhost(&record.vhost) {
                Some(vhost) => vhost.apply_unbind(&record).map(|_| false),
                None => Err(no_vhost(&record.vhost)),
            },
            Change::PutPolicy(record) => match broker.vhost(&record.vhost) {
                Some(vhost) => vhost
                    .apply_put_policy(record)
                    .map_err(AmqpError::precondition_failed),
                None => Err(no_vhost(&record.vhost)),
            },
            Change::DeletePolicy { vhost, name } => match broker.vhost(&vhost) {
                Some(vhost) => Ok(vhost.apply_delete_policy(&name)),
                None => Err(no_vhost(&vhost)),
            },
        })
    }
}

fn no_vhost(name: &str) -> AmqpError {
    AmqpError::connection(
        crate::protocol::error::code::NOT_ALLOWED,
        format!("vhost {name} not found"),
    )
}

//! The queue type as one abstraction, as RabbitMQ's `rabbit_queue_type`:
//! callers ask the queue, and its type answers. Each type's rules live in
//! its own folder (`classic/`, `quorum/`, `stream/`); this file only
//! dispatches, by `match` on a plain enum (no `dyn`, nothing allocated).

use super::{classic, quorum, remote, stream, Queue, QueueArguments, QueueHost, QueueOptions};
use crate::protocol::{AmqpError, FieldTable};
use crate::store::Store;
use std::sync::{Arc, Weak};

/// `x-queue-type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

/// A queue's type together with what the type itself holds (a stream's
/// log and readers). `Queue` matches on it for every operation a type
/// answers differently, exhaustively: a new type (quorum on Raft) must say
/// what it does for each.
pub(super) enum Kind {
    Classic,
    Quorum,
    Stream(Arc<stream::Stream>),
    /// A queue that lives on another cluster node: this node routes to it
    /// (forwarding what it routes) and answers for its definition.
    Remote(Arc<remote::Home>),
}

impl Kind {
    /// The kind for `queue_type` before a stream's log is opened (see
    /// [`Queue::open`]).
    pub(super) fn of(queue_type: QueueType) -> Kind {
        match queue_type {
            QueueType::Quorum => Kind::Quorum,
            QueueType::Classic | QueueType::Stream => Kind::Classic,
        }
    }

    pub(super) fn queue_type(&self) -> QueueType {
        match self {
            Kind::Classic => QueueType::Classic,
            Kind::Quorum => QueueType::Quorum,
            Kind::Stream(_) => QueueType::Stream,
            Kind::Remote(home) => home.queue_type,
        }
    }
}

/// What a declare asks for, as far as a queue type cares.
pub struct DeclareProperties<'a> {
    pub name: &'a str,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
}

impl DeclareProperties<'_> {
    /// RabbitMQ's 406 for the first property of `checks` (its name, and
    /// whether the declare has it wrong) that a type refuses; each type
    /// checks in its own order.
    pub fn refuse_first(checks: [(&str, bool); 3], resource: &str) -> Result<(), AmqpError> {
        match checks.iter().find(|(_, wrong)| *wrong) {
            Some((property, _)) => Err(AmqpError::precondition_failed(format!(
                "invalid property '{property}' for {resource}"
            ))),
            None => Ok(()),
        }
    }
}

/// Where a replicated queue lives: its leader, its members, and which of
/// them are online (management's `leader`, `members`, `online`).
pub struct Members<'a> {
    pub leader: &'a str,
    pub members: Vec<&'a str>,
    pub online: Vec<&'a str>,
}

impl QueueType {
    /// The name management and `x-queue-type` use.
    pub fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }

    /// The type `x-queue-type` (or a vhost's default) names, if known.
    pub fn from_name(name: &str) -> Option<QueueType> {
        match name {
            "classic" => Some(QueueType::Classic),
            "quorum" => Some(QueueType::Quorum),
            "stream" => Some(QueueType::Stream),
            _ => None,
        }
    }

    /// The type's declare rules (after its arguments parsed), with
    /// RabbitMQ's 406 texts; `resource` is `queue 'q' in vhost 'v'`.
    pub fn validate_declare(
        self,
        req: &DeclareProperties,
        resource: &str,
    ) -> Result<(), AmqpError> {
        match self {
            QueueType::Classic => classic::check_declare(req, resource),
            QueueType::Quorum => quorum::check_declare(req, resource),
            QueueType::Stream => stream::rules::check_declare(req, resource),
        }
    }

    /// Whether the type writes its copy of a message to a log of its own,
    /// which the writer syncs after the message log's records of the same
    /// batch (a removal elsewhere must wait for that sync).
    pub fn has_own_log(self) -> bool {
        match self {
            QueueType::Classic | QueueType::Quorum => false,
            QueueType::Stream => true,
        }
    }
}

impl Queue {
    /// A queue of the type `args` name, in vhost `vhost` (`host`). `stored`: whether
    /// its persistent messages go to the message log of `store`; a stream
    /// opens (or creates) its own log there.
    pub fn open(
        name: String,
        vhost: String,
        options: QueueOptions,
        args: QueueArguments,
        host: Weak<dyn QueueHost>,
        store: Option<&Arc<Store>>,
        stored: bool,
    ) -> Result<Queue, AmqpError> {
        let log = store.filter(|_| stored).map(|s| s.log.clone());
        let kind = args.queue_type;
        let retention = args.stream;
        let mut queue = Queue::with_arguments(name, vhost, options, args, host, log);
        match (kind, retention) {
            (QueueType::Stream, Some(retention)) => {
                let stream = stream::Stream::open(
                    store.map(|s| &**s),
                    &queue.vhost,
                    &queue.name,
                    retention,
                    &queue.resource(),
                )?;
                queue.kind = Kind::Stream(Arc::new(stream));
            }
            (QueueType::Classic | QueueType::Quorum | QueueType::Stream, _) => {}
        }
        Ok(queue)
    }

    /// basic.get, or the type's refusal (540 for a stream).
    pub fn check_get(&self) -> Result<(), AmqpError> {
        match self.queue_type() {
            QueueType::Classic | QueueType::Quorum => Ok(()),
            QueueType::Stream => Err(stream::rules::unsupported("basic.get", &self.resource())),
        }
    }

    /// queue.purge, or the type's refusal (540 for a stream).
    pub fn check_purge(&self) -> Result<(), AmqpError> {
        match self.queue_type() {
            QueueType::Classic | QueueType::Quorum => Ok(()),
            QueueType::Stream => Err(stream::rules::unsupported("queue.purge", &self.resource())),
        }
    }

    /// basic.nack and basic.reject, or the type's refusal (540 for a
    /// stream).
    pub fn check_nack(&self) -> Result<(), AmqpError> {
        match self.queue_type() {
            QueueType::Classic | QueueType::Quorum => Ok(()),
            QueueType::Stream => Err(stream::rules::unsupported(
                "basic.nack and basic.reject",
                &self.resource(),
            )),
        }
    }

    /// basic.consume with these options (`prefetch` is the channel's
    /// per-consumer qos), or the type's refusal.
    pub fn check_consume(
        &self,
        no_ack: bool,
        prefetch: u32,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        match self.queue_type() {
            QueueType::Classic | QueueType::Quorum => Ok(()),
            QueueType::Stream => {
                stream::rules::check_consume(&self.resource(), no_ack, prefetch, arguments)
            }
        }
    }

    /// Management's browse, or the type's refusal text.
    pub fn check_browse(&self) -> Result<(), String> {
        match self.queue_type() {
            QueueType::Classic | QueueType::Quorum => Ok(()),
            QueueType::Stream => Err(stream::rules::browse_refused(&self.resource())),
        }
    }

    /// A replicated queue's members, as node `node` sees them; `None` for
    /// the types that live on one node.
    pub fn members<'a>(&self, node: &'a str) -> Option<Members<'a>> {
        match self.queue_type() {
            QueueType::Classic | QueueType::Stream => None,
            QueueType::Quorum => Some(quorum::members(node)),
        }
    }

    /// Whether this queue writes its copy of a message to a log of its own
    /// (see [`QueueType::has_own_log`]).
    pub fn has_own_log(&self) -> bool {
        self.queue_type().has_own_log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declare(
        name: &str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
    ) -> DeclareProperties<'_> {
        DeclareProperties {
            name,
            durable,
            exclusive,
            auto_delete,
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in [QueueType::Classic, QueueType::Quorum, QueueType::Stream] {
            assert_eq!(QueueType::from_name(kind.name()), Some(kind));
        }
        assert_eq!(QueueType::from_name("foo"), None);
    }

    #[test]
    fn each_type_answers_declare_validation_with_rabbitmqs_texts() {
        let r = "queue 'q' in vhost '/'";
        let text = |kind: QueueType, req: DeclareProperties| {
            kind.validate_declare(&req, r).err().map(|e| e.text)
        };
        assert_eq!(
            text(QueueType::Classic, declare("", false, true, true)),
            None
        );
        // Both refuse auto-delete and non-durable together, each naming the
        // property it checks first.
        assert_eq!(
            text(QueueType::Quorum, declare("q", false, false, true)).as_deref(),
            Some("PRECONDITION_FAILED - invalid property 'auto-delete' for queue 'q' in vhost '/'")
        );
        assert_eq!(
            text(QueueType::Stream, declare("q", false, false, true)).as_deref(),
            Some("PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q' in vhost '/'")
        );
        assert_eq!(
            text(QueueType::Stream, declare("", true, false, false)).as_deref(),
            Some("PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue")
        );
    }
}

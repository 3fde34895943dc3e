//! A non-passive redeclare must match what exists, property by property,
//! with RabbitMQ's codes and texts: one table for queues, one for
//! exchanges. Each row declares the original on a fresh name, redeclares it
//! with one difference on another channel of the same connection, and
//! checks the reply (and that an identical redeclare is still accepted).

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::ExchangeKind;

fn args(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongString(LongString::from(*v)));
    }
    t
}

fn ttl(ms: i32) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
    t
}

struct QueueCase {
    what: &'static str,
    first: (QueueDeclareOptions, FieldTable),
    again: (QueueDeclareOptions, FieldTable),
    /// `None`: accepted. Text with `{q}` for the queue name.
    refused: Option<(u16, &'static str)>,
}

fn q(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    }
}

const LOCKED: &str = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";

#[tokio::test]
async fn queue_redeclare_checks_every_property() {
    let none = FieldTable::default;
    let cases = vec![
        QueueCase {
            what: "identical",
            first: (q(true, false, false), ttl(1000)),
            again: (q(true, false, false), ttl(1000)),
            refused: None,
        },
        QueueCase {
            what: "identical exclusive",
            first: (q(false, true, false), none()),
            again: (q(false, true, false), none()),
            refused: None,
        },
        QueueCase {
            what: "durable",
            first: (q(false, false, false), none()),
            again: (q(true, false, false), none()),
            refused: Some((406, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'")),
        },
        QueueCase {
            what: "auto-delete",
            first: (q(false, false, true), none()),
            again: (q(false, false, false), none()),
            refused: Some((406, "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': received 'false' but current is 'true'")),
        },
        QueueCase {
            what: "exclusive, redeclared shared",
            first: (q(false, true, false), none()),
            again: (q(false, false, false), none()),
            refused: Some((405, LOCKED)),
        },
        QueueCase {
            what: "shared, redeclared exclusive",
            first: (q(false, false, false), none()),
            again: (q(false, true, false), none()),
            refused: Some((405, LOCKED)),
        },
        QueueCase {
            what: "argument value",
            first: (q(false, false, false), ttl(1000)),
            again: (q(false, false, false), ttl(2000)),
            refused: Some((406, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received '2000' but current is '1000'")),
        },
        QueueCase {
            what: "argument left out",
            first: (q(false, false, false), ttl(1000)),
            again: (q(false, false, false), none()),
            refused: Some((406, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received none but current is the value '1000' of type 'signedint'")),
        },
        QueueCase {
            what: "queue type",
            first: (q(true, false, false), none()),
            again: (q(true, false, false), args(&[("x-queue-type", "quorum")])),
            refused: Some((406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': received the value 'quorum' of type 'longstr' but current is none")),
        },
    ];
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    for (i, case) in cases.into_iter().enumerate() {
        let name = format!("q{i}");
        let first = conn.create_channel().await.unwrap();
        first
            .queue_declare(name.as_str().into(), case.first.0, case.first.1)
            .await
            .unwrap_or_else(|e| panic!("{}: first declare: {e}", case.what));
        let again = conn.create_channel().await.unwrap();
        let result = again
            .queue_declare(name.as_str().into(), case.again.0, case.again.1)
            .await;
        match case.refused {
            None => {
                result.unwrap_or_else(|e| panic!("{}: refused: {e}", case.what));
            }
            Some((code, text)) => assert_eq!(
                broker.error_of(result).await,
                (code, text.replace("{q}", &name)),
                "{}",
                case.what
            ),
        }
    }
    broker.assert_healthy().await;
}

struct ExchangeCase {
    what: &'static str,
    first: (ExchangeKind, ExchangeDeclareOptions, FieldTable),
    again: (ExchangeKind, ExchangeDeclareOptions, FieldTable),
    refused: Option<&'static str>,
}

fn x(durable: bool, auto_delete: bool, internal: bool) -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable,
        auto_delete,
        internal,
        ..Default::default()
    }
}

#[tokio::test]
async fn exchange_redeclare_checks_every_property() {
    use ExchangeKind::{Direct, Fanout};
    let none = FieldTable::default;
    let cases = vec![
        ExchangeCase {
            what: "identical",
            first: (Direct, x(true, false, false), args(&[("alternate-exchange", "ae")])),
            again: (Direct, x(true, false, false), args(&[("alternate-exchange", "ae")])),
            refused: None,
        },
        ExchangeCase {
            what: "type",
            first: (Direct, x(false, false, false), none()),
            again: (Fanout, x(false, false, false), none()),
            refused: Some("PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but current is 'direct'"),
        },
        ExchangeCase {
            what: "durable",
            first: (Direct, x(false, false, false), none()),
            again: (Direct, x(true, false, false), none()),
            refused: Some("PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'true' but current is 'false'"),
        },
        ExchangeCase {
            what: "auto-delete",
            first: (Direct, x(false, true, false), none()),
            again: (Direct, x(false, false, false), none()),
            refused: Some("PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange '{x}' in vhost '/': received 'false' but current is 'true'"),
        },
        ExchangeCase {
            what: "internal",
            first: (Direct, x(false, false, false), none()),
            again: (Direct, x(false, false, true), none()),
            refused: Some("PRECONDITION_FAILED - inequivalent arg 'internal' for exchange '{x}' in vhost '/': received 'true' but current is 'false'"),
        },
        ExchangeCase {
            what: "alternate exchange",
            first: (Direct, x(false, false, false), none()),
            again: (Direct, x(false, false, false), args(&[("alternate-exchange", "ae")])),
            refused: Some("PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost '/': received the value 'ae' of type 'longstr' but current is none"),
        },
    ];
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    for (i, case) in cases.into_iter().enumerate() {
        let name = format!("x{i}");
        let first = conn.create_channel().await.unwrap();
        first
            .exchange_declare(
                name.as_str().into(),
                case.first.0,
                case.first.1,
                case.first.2,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: first declare: {e}", case.what));
        let again = conn.create_channel().await.unwrap();
        let result = again
            .exchange_declare(
                name.as_str().into(),
                case.again.0,
                case.again.1,
                case.again.2,
            )
            .await;
        match case.refused {
            None => {
                result.unwrap_or_else(|e| panic!("{}: refused: {e}", case.what));
            }
            Some(text) => assert_eq!(
                broker.error_of(result).await,
                (406, text.replace("{x}", &name)),
                "{}",
                case.what
            ),
        }
    }
    broker.assert_healthy().await;
}

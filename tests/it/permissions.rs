//! Permission enforcement: configure, write and read regular expressions
//! per user and vhost, checked as RabbitMQ checks them, with its 403 texts.

use crate::common::*;
use broker::broker::users::{Permission, User};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

const REFUSED: u16 = 403;

/// A user `ref` with configure `^ref-c`, write `^ref-w`, read `^ref-r`
/// (the setup the reference notes were probed with); returns its URL.
fn restricted_user(broker: &TestBroker) -> String {
    broker
        .broker
        .put_user(User::with_password("ref", "secret", vec![]))
        .expect("stored");
    broker
        .broker
        .set_permission(
            "ref",
            "/",
            Permission {
                configure: "^ref-c".into(),
                write: "^ref-w".into(),
                read: "^ref-r".into(),
            },
        )
        .expect("stored");
    format!("amqp://ref:secret@127.0.0.1:{}/%2f", broker.port)
}

fn refused(what: &str, name: &str) -> (u16, String) {
    (
        REFUSED,
        format!("ACCESS_REFUSED - access to {what} '{name}' in vhost '/' refused for user 'ref'"),
    )
}

async fn connect_as(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, Default::default())
        .await
        .expect("connect as ref");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

#[tokio::test]
async fn each_operation_needs_its_permission() {
    let broker = TestBroker::start().await;
    let url = restricted_user(&broker);
    // Objects the restricted user may only partly use, made by guest.
    {
        let (_c, admin) = broker.channel().await;
        for q in ["ref-w-q", "ref-r-q", "other-q"] {
            admin
                .queue_declare(q.into(), Default::default(), FieldTable::default())
                .await
                .unwrap();
        }
        for x in ["ref-r-x", "ref-w-x", "other-x"] {
            admin
                .exchange_declare(
                    x.into(),
                    ExchangeKind::Fanout,
                    Default::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        publish(&admin, "", "ref-r-q", b"readable").await;
    }

    // Allowed: configure on ref-c*, write to ref-w*, read from ref-r*.
    let (_c, ch) = connect_as(&url).await;
    ch.queue_declare("ref-c-q".into(), Default::default(), FieldTable::default())
        .await
        .expect("configure granted");
    ch.exchange_declare(
        "ref-c-x".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("configure granted");
    ch.queue_bind(
        "ref-w-q".into(),
        "ref-r-x".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("write on queue, read on exchange");
    let got = ch
        .basic_get("ref-r-q".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("read granted");
    assert_eq!(got.unwrap().delivery.data, b"readable");
    ch.basic_publish(
        "ref-w-x".into(),
        "".into(),
        Default::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .expect("write granted");
    // Passive declares need no permission.
    ch.queue_declare(
        "other-q".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare");

    // Refused, each on a fresh channel of the same connection.
    type Probe = Box<dyn Fn(Channel) -> futures_lite::future::Boxed<Result<(), lapin::Error>>>;
    let cases: Vec<(&str, Probe, (u16, String))> = vec![
        (
            "declare queue",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_declare("other-q2".into(), Default::default(), FieldTable::default())
                        .await
                        .map(|_| ())
                })
            }),
            refused("queue", "other-q2"),
        ),
        (
            "declare exchange",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.exchange_declare(
                        "other-x2".into(),
                        ExchangeKind::Direct,
                        Default::default(),
                        FieldTable::default(),
                    )
                    .await
                })
            }),
            refused("exchange", "other-x2"),
        ),
        (
            "delete queue",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_delete("other-q".into(), Default::default())
                        .await
                        .map(|_| ())
                })
            }),
            refused("queue", "other-q"),
        ),
        (
            "bind without write on the queue",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_bind(
                        "ref-r-q".into(),
                        "ref-r-x".into(),
                        "".into(),
                        Default::default(),
                        FieldTable::default(),
                    )
                    .await
                })
            }),
            refused("queue", "ref-r-q"),
        ),
        (
            "bind without read on the exchange",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_bind(
                        "ref-w-q".into(),
                        "other-x".into(),
                        "".into(),
                        Default::default(),
                        FieldTable::default(),
                    )
                    .await
                })
            }),
            refused("exchange", "other-x"),
        ),
        (
            "get",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.basic_get("other-q".into(), BasicGetOptions::default())
                        .await
                        .map(|_| ())
                })
            }),
            refused("queue", "other-q"),
        ),
        (
            "consume",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.basic_consume(
                        "ref-w-q".into(),
                        "".into(),
                        Default::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ())
                })
            }),
            refused("queue", "ref-w-q"),
        ),
        (
            "purge",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_purge("other-q".into(), Default::default())
                        .await
                        .map(|_| ())
                })
            }),
            refused("queue", "other-q"),
        ),
        (
            "publish to the default exchange",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.basic_publish(
                        "".into(),
                        "ref-w-q".into(),
                        Default::default(),
                        b"x",
                        BasicProperties::default(),
                    )
                    .await?;
                    // The refusal closes the channel asynchronously; probe it.
                    ch.queue_declare(
                        "ref-w-q".into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ())
                })
            }),
            refused("exchange", "amq.default"),
        ),
        (
            "server-named queue",
            Box::new(|ch| {
                Box::pin(async move {
                    ch.queue_declare(
                        "".into(),
                        QueueDeclareOptions::exclusive(),
                        FieldTable::default(),
                    )
                    .await
                    .map(|_| ())
                })
            }),
            (REFUSED, "server-named".into()),
        ),
    ];
    // Errors come through `error_of`: a probe sent after a refused publish
    // may find the channel already closing, and the close's reason is then
    // taken from the connection's events.
    let conn = broker.connect_to(&url).await;
    for (case, probe, expected) in cases {
        let ch = conn.create_channel().await.unwrap();
        let err = broker.error_of(probe(ch).await).await;
        if expected.1 == "server-named" {
            assert_eq!(err.0, REFUSED, "{case}");
            assert!(
                err.1
                    .starts_with("ACCESS_REFUSED - access to queue 'amq.gen-"),
                "{case}: {}",
                err.1
            );
        } else {
            assert_eq!(err, expected, "{case}");
        }
    }
    // The refused server-named queue did not stay behind.
    let leftover = broker
        .broker
        .vhost("/")
        .unwrap()
        .queues()
        .iter()
        .any(|q| q.name.starts_with("amq.gen-"));
    assert!(!leftover);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn dead_letter_and_alternate_exchanges_need_write_on_them() {
    let broker = TestBroker::start().await;
    let url = restricted_user(&broker);
    let (_c, ch) = connect_as(&url).await;
    let err = expect_amqp_error(
        ch.queue_declare(
            "ref-c-dl".into(),
            Default::default(),
            table(&[("x-dead-letter-exchange", long_str("other-dlx"))]),
        )
        .await,
    );
    // Configure is granted; read on the queue is checked next.
    assert_eq!(err, refused("queue", "ref-c-dl"));
    let ch = _c.create_channel().await.unwrap();
    let err = expect_amqp_error(
        ch.exchange_declare(
            "ref-c-ae".into(),
            ExchangeKind::Direct,
            Default::default(),
            table(&[("alternate-exchange", long_str("other-ae"))]),
        )
        .await,
    );
    assert_eq!(err, refused("exchange", "ref-c-ae"));
}

#[tokio::test]
async fn a_user_without_permissions_on_the_vhost_cannot_open_it() {
    let broker = TestBroker::start().await;
    broker
        .broker
        .put_user(User::with_password("nobody", "pw", vec![]))
        .expect("stored");
    let url = format!("amqp://nobody:pw@127.0.0.1:{}/%2f", broker.port);
    let err = Connection::connect(&url, Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&err),
        (
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'nobody'".into()
        )
    );
}

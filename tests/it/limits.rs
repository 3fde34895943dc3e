//! Connection limits: the node's total (`amqp.max_connections`), per vhost
//! and per user (`[limits]`). A client over a limit is refused at
//! connection.open with 530 NOT_ALLOWED and RabbitMQ's text; the clients
//! already connected keep working, and a slot comes back when a
//! connection closes, cleanly or not.

use crate::common::{amqp_error, RawClient, TestBroker};
use broker::broker::users::Permission;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

fn url(port: u16, user: &str) -> String {
    format!("amqp://{user}:secret@127.0.0.1:{port}/%2f")
}

fn add_user(broker: &TestBroker, name: &str) {
    let mut users = broker.broker.users.write();
    users.add(name, "secret", &[]);
    users.set_permission(
        name,
        "/",
        Permission {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        },
    );
}

async fn connect_as(broker: &TestBroker, user: &str) -> Result<Connection, lapin::Error> {
    let url = if user == "guest" {
        broker.url()
    } else {
        url(broker.port, user)
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("connect timed out")
}

/// The refusal a connection attempt ran into.
async fn refused(broker: &TestBroker, user: &str) -> (u16, String) {
    match connect_as(broker, user).await {
        Ok(_) => panic!("{user} got over the connection limit"),
        Err(e) => amqp_error(&e),
    }
}

/// Proves a connection still works: it declares a queue.
async fn works(conn: &Connection) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

/// Connecting until it succeeds: a slot is given back when the broker has
/// noticed that a connection went away.
async fn eventually_connects(broker: &TestBroker, user: &str) -> Connection {
    for _ in 0..100 {
        if let Ok(conn) = connect_as(broker, user).await {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user} could not connect again after a slot was freed")
}

#[tokio::test]
async fn the_node_connection_limit_refuses_the_next_client() {
    let broker = TestBroker::start_with(|c| c.amqp.max_connections = Some(2)).await;
    add_user(&broker, "alice");
    let first = broker.connect().await;
    let second = connect_as(&broker, "alice").await.expect("second");
    let (code, text) = refused(&broker, "guest").await;
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - connection refused: node connection limit (2) is reached"
    );
    works(&first).await;
    works(&second).await;

    // A clean close gives the slot back at once.
    first.close(200, "bye".into()).await.expect("close");
    let third = connect_as(&broker, "guest").await.expect("slot given back");
    works(&third).await;
}

#[tokio::test]
async fn the_per_user_limit_counts_each_user_apart() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_connections_per_user = Some(1);
        c.limits.users.insert(
            "alice".into(),
            broker::config::UserLimits {
                max_connections: Some(2),
            },
        );
    })
    .await;
    add_user(&broker, "alice");
    add_user(&broker, "bob");
    let guest = broker.connect().await;
    let (code, text) = refused(&broker, "guest").await;
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - Connection refused for user 'guest': user connection limit (1) is reached"
    );
    // alice has her own, higher limit; bob the default one.
    let a1 = connect_as(&broker, "alice").await.expect("alice 1");
    let a2 = connect_as(&broker, "alice").await.expect("alice 2");
    let (code, text) = refused(&broker, "alice").await;
    assert_eq!(code, 530);
    assert!(
        text.contains("user connection limit (2) is reached"),
        "{text}"
    );
    let b1 = connect_as(&broker, "bob").await.expect("bob 1");
    for conn in [&guest, &a1, &a2, &b1] {
        works(conn).await;
    }
}

#[tokio::test]
async fn the_vhost_limit_refuses_with_rabbitmqs_text() {
    let broker = TestBroker::start_with(|c| {
        c.limits.vhosts.insert(
            "/".into(),
            broker::config::VhostLimits {
                max_connections: Some(1),
                ..Default::default()
            },
        );
    })
    .await;
    let first = broker.connect().await;
    let (code, text) = refused(&broker, "guest").await;
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is reached"
    );
    works(&first).await;
}

#[tokio::test]
async fn a_vhost_limit_of_zero_refuses_everyone() {
    let broker = TestBroker::start_with(|c| {
        c.limits.vhosts.insert(
            "/".into(),
            broker::config::VhostLimits {
                max_connections: Some(0),
                ..Default::default()
            },
        );
    })
    .await;
    let (code, text) = refused(&broker, "guest").await;
    assert_eq!(code, 530);
    assert!(text.contains("connection limit (0) is reached"), "{text}");
}

#[tokio::test]
async fn the_raw_refusal_is_a_connection_close_on_connection_open() {
    let broker = TestBroker::start_with(|c| c.amqp.max_connections = Some(1)).await;
    let _first = RawClient::open(broker.port).await;
    let mut second = RawClient::connect(broker.port).await;
    use amq_protocol::protocol::connection;
    use broker::protocol::AMQPClass;
    second.send_raw(b"AMQP\x00\x00\x09\x01").await;
    second.expect_method().await; // start
    second
        .send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        )
        .await;
    second.expect_method().await; // tune
    second
        .send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 10,
                frame_max: 4096,
                heartbeat: 0,
            })),
        )
        .await;
    second
        .send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
    let (code, _, class_id, method_id) = second.expect_connection_close().await;
    assert_eq!((code, class_id, method_id), (530, 10, 40));
}

#[tokio::test]
async fn an_abruptly_dropped_connection_gives_its_slot_back() {
    let broker = TestBroker::start_with(|c| c.amqp.max_connections = Some(1)).await;
    let raw = RawClient::open(broker.port).await;
    let (code, _) = refused(&broker, "guest").await;
    assert_eq!(code, 530);
    drop(raw); // no connection.close: the socket just goes away
    let conn = eventually_connects(&broker, "guest").await;
    works(&conn).await;
}

#[tokio::test]
async fn limits_are_read_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broker.toml");
    std::fs::write(
        &path,
        r#"
[amqp]
max_connections = 500

[limits]
max_connections_per_user = 20

[limits.users.alice]
max_connections = 3

[limits.vhosts."/"]
max_connections = 100
max_queues = 1000
max_exchanges = 50
"#,
    )
    .expect("write config");
    let config = broker::Config::load(Some(&path)).expect("load");
    assert_eq!(config.amqp.max_connections, Some(500));
    assert_eq!(config.limits.user_max_connections("alice"), Some(3));
    assert_eq!(config.limits.user_max_connections("bob"), Some(20));
    assert_eq!(config.limits.vhost_max_connections("/"), Some(100));
    assert_eq!(config.limits.vhost_max_queues("/"), Some(1000));
    assert_eq!(config.limits.vhost_max_exchanges("/"), Some(50));
    assert_eq!(config.limits.vhost_max_exchanges("other"), None);
    assert_eq!(config.limits.vhost_max_connections("other"), None);
}

/// Needs the queue-count check in `VHost` (see the limits section of the
/// README): queue.declare of a new queue past `max_queues` is refused with
/// 406 and RabbitMQ's text, redeclaring an existing queue is not.
#[tokio::test]
async fn the_vhost_queue_limit_refuses_a_new_queue() {
    let broker = TestBroker::start_with(|c| {
        c.limits.vhosts.insert(
            "/".into(),
            broker::config::VhostLimits {
                max_queues: Some(2),
                ..Default::default()
            },
        );
    })
    .await;
    let (_conn, ch) = broker.channel().await;
    for name in ["q1", "q2"] {
        ch.queue_declare(name.into(), Default::default(), FieldTable::default())
            .await
            .expect("declare");
    }
    // Redeclaring an existing queue is fine.
    ch.queue_declare("q1".into(), Default::default(), FieldTable::default())
        .await
        .expect("redeclare");
    let result = ch
        .queue_declare("q3".into(), Default::default(), FieldTable::default())
        .await;
    let (code, text) = broker.error_of(result).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (2) is reached"
    );
    // Below the limit again, the queue can be declared.
    let ch = _conn.create_channel().await.unwrap();
    ch.queue_delete("q1".into(), Default::default())
        .await
        .unwrap();
    ch.queue_declare("q3".into(), Default::default(), FieldTable::default())
        .await
        .expect("declare under the limit");
}

/// Not a RabbitMQ limit (it has max-connections and max-queues only): a new
/// exchange past `max_exchanges` gets 406 in the style of the queue limit;
/// the predeclared amq.* exchanges do not count, redeclares and passive
/// declares are not refused, other vhosts and the refused client's
/// connection keep working.
#[tokio::test]
async fn the_vhost_exchange_limit_refuses_a_new_exchange() {
    let broker = TestBroker::start_with(|c| {
        c.limits.vhosts.insert(
            "/".into(),
            broker::config::VhostLimits {
                max_exchanges: Some(2),
                ..Default::default()
            },
        );
    })
    .await;
    broker
        .broker
        .put_vhost(broker::store::catalog::VhostRecord {
            name: "other".into(),
            ..Default::default()
        })
        .expect("stored");
    broker.broker.grant_full("guest", "other");
    let (conn, ch) = broker.channel().await;
    let declare = |ch: lapin::Channel, name: &'static str, passive: bool| async move {
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                passive,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    };
    for name in ["x1", "x2"] {
        declare(ch.clone(), name, false).await.expect("declare");
    }
    declare(ch.clone(), "x1", false).await.expect("redeclare");
    declare(ch.clone(), "amq.direct", true)
        .await
        .expect("passive");
    let (code, text) = broker
        .error_of(declare(ch.clone(), "x3", false).await)
        .await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - cannot declare exchange 'x3': exchange limit in vhost '/' (2) is reached"
    );
    // The connection is fine (a channel error), and queues are unaffected.
    let ch = conn.create_channel().await.expect("new channel");
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .expect("queues are not limited");
    // Another vhost has no limit.
    let other = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/other", broker.port),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect to other");
    let och = other.create_channel().await.unwrap();
    for name in ["x1", "x2", "x3"] {
        declare(och.clone(), name, false)
            .await
            .expect("no limit on other");
    }
    // Below the limit again, the exchange can be declared.
    ch.exchange_delete("x1".into(), Default::default())
        .await
        .unwrap();
    declare(ch.clone(), "x3", false)
        .await
        .expect("declare under the limit");
}

//! Paging: queues past their in-memory bound (here set small with
//! `x-max-in-memory-length`) keep messages in page files and read them
//! back in order, with their properties, for consumers, basic.get, TTL,
//! priorities, requeue, overflow, purge, delete and restarts.

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use std::sync::Arc;

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

fn queue(broker: &TestBroker, name: &str) -> Arc<broker::broker::queue::Queue> {
    broker
        .broker
        .vhost("/")
        .and_then(|v| v.queue(name))
        .expect("queue exists")
}

fn body_of(i: usize) -> Vec<u8> {
    // Sizes vary, some bodies are empty.
    format!("message {i} ").repeat(i % 7).into_bytes()
}

fn props_of(i: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("i".into(), int(i as i64));
    headers.insert(
        "name".into(),
        AMQPValue::LongString(LongString::from(format!("n{i}"))),
    );
    BasicProperties::default()
        .with_headers(headers)
        .with_message_id(ShortString::from(format!("id-{i}")))
        .with_content_type("text/plain".into())
}

fn header_i(props: &BasicProperties) -> i64 {
    match props.headers().as_ref().and_then(|h| h.inner().get("i")) {
        Some(AMQPValue::LongLongInt(v)) => *v,
        other => panic!("header i: {other:?}"),
    }
}

fn check(delivery: &lapin::message::Delivery, i: usize, key: &str) {
    assert_eq!(delivery.data, body_of(i), "body of {i}");
    assert_eq!(header_i(&delivery.properties), i as i64);
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(format!("id-{i}").as_str())
    );
    assert_eq!(
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(delivery.routing_key.as_str(), key);
}

#[tokio::test]
async fn consumers_get_paged_messages_in_order_with_their_properties() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "q", table(&[("x-max-in-memory-length", int(50))])).await;
    const COUNT: usize = 3000;
    for i in 0..COUNT {
        publish_with(&ch, "", "q", &body_of(i), props_of(i)).await;
    }
    assert_eq!(ready(&ch, "q").await, COUNT as u32);
    let q = queue(&broker, "q");
    assert!(q.paged_count() >= COUNT - 50, "paged: {}", q.paged_count());
    assert!(q.page_files().iter().all(|f| f.exists()));
    assert!(!q.page_files().is_empty());
    ch.basic_qos(100, Default::default()).await.unwrap();
    let mut consumer = consume(&ch, "q", BasicConsumeOptions::default()).await;
    for i in 0..COUNT {
        let d = next(&mut consumer).await;
        check(&d, i, "q");
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_nothing(&mut consumer, 100).await;
    assert_eq!(q.paged_count(), 0);
    // Batches after the first were read ahead on the page I/O thread
    // while the consumer drained the one before (not under the queue's
    // lock).
    assert!(
        q.prefetched_page_batches() > 0,
        "read ahead: {}",
        q.prefetched_page_batches()
    );
    broker.assert_healthy().await;
}

#[tokio::test]
async fn default_bound_pages_large_backlogs() {
    // Bodies of 64 KiB: past the default 8 MiB bound after ~130.
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "big", FieldTable::default()).await;
    for i in 0..400u32 {
        let mut body = vec![(i % 251) as u8; 64 * 1024];
        body[..4].copy_from_slice(&i.to_be_bytes());
        publish(&ch, "", "big", &body).await;
    }
    assert_eq!(ready(&ch, "big").await, 400);
    assert!(queue(&broker, "big").paged_count() > 200);
    for i in 0..400u32 {
        let m = get(&ch, "big").await.expect("message");
        let body = m.delivery.data;
        assert_eq!(body.len(), 64 * 1024);
        assert_eq!(body[..4], i.to_be_bytes());
        assert!(body[4..].iter().all(|b| *b == (i % 251) as u8));
    }
    assert!(get(&ch, "big").await.is_none());
}

#[tokio::test]
async fn priorities_are_kept_when_paged() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "pq",
        table(&[
            ("x-max-priority", int(5)),
            ("x-max-in-memory-length", int(20)),
        ]),
    )
    .await;
    const COUNT: usize = 600;
    for i in 0..COUNT {
        let props = props_of(i).with_priority((i % 6) as u8);
        publish_with(&ch, "", "pq", &body_of(i), props).await;
    }
    assert_eq!(ready(&ch, "pq").await, COUNT as u32);
    assert!(queue(&broker, "pq").paged_count() > 0);
    let mut expected = vec![];
    for p in (0..6).rev() {
        expected.extend((0..COUNT).filter(|i| i % 6 == p));
    }
    for i in expected {
        let m = get(&ch, "pq").await.expect("message");
        check(&m.delivery, i, "pq");
        assert_eq!(*m.delivery.properties.priority(), Some((i % 6) as u8));
    }
    assert!(get(&ch, "pq").await.is_none());
}

#[tokio::test]
async fn ttl_expires_paged_messages_from_the_head_and_dead_letters_them() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "dlq", FieldTable::default()).await;
    declare(
        &ch,
        "ttl",
        table(&[
            ("x-max-in-memory-length", int(10)),
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str("dlq")),
        ]),
    )
    .await;
    const COUNT: usize = 300;
    for i in 0..COUNT {
        let mut props = props_of(i);
        if i % 2 == 0 {
            props = props.with_expiration("50".into());
        }
        publish_with(&ch, "", "ttl", &body_of(i), props).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Expired messages go as they reach the head.
    for i in (0..COUNT).filter(|i| i % 2 == 1) {
        let m = get(&ch, "ttl").await.expect("message");
        check(&m.delivery, i, "ttl");
    }
    assert!(get(&ch, "ttl").await.is_none());
    for i in (0..COUNT).filter(|i| i % 2 == 0) {
        let m = get(&ch, "dlq").await.expect("dead letter");
        assert_eq!(m.delivery.data, body_of(i));
        assert_eq!(header_i(&m.delivery.properties), i as i64);
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        assert!(headers.inner().contains_key("x-death"), "x-death on {i}");
    }
    assert!(get(&ch, "dlq").await.is_none());
}

#[tokio::test]
async fn requeued_messages_go_back_before_the_paged_ones() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "rq", table(&[("x-max-in-memory-length", int(10))])).await;
    const COUNT: usize = 500;
    for i in 0..COUNT {
        publish_with(&ch, "", "rq", &body_of(i), props_of(i)).await;
    }
    // Take 40 (more than the bound), give them back unacked.
    ch.basic_qos(40, Default::default()).await.unwrap();
    let mut consumer = consume(&ch, "rq", BasicConsumeOptions::default()).await;
    let mut last = 0;
    for i in 0..40 {
        let d = next(&mut consumer).await;
        check(&d, i, "rq");
        last = d.delivery_tag;
    }
    ch.basic_nack(
        last,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    // Redelivered first, then the rest in order.
    for i in 0..COUNT {
        let d = next(&mut consumer).await;
        check(&d, i, "rq");
        assert_eq!(d.redelivered, i < 40, "redelivered flag of {i}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_nothing(&mut consumer, 100).await;
}

#[tokio::test]
async fn drop_head_overflow_drops_paged_messages_oldest_first() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "lim",
        table(&[
            ("x-max-in-memory-length", int(10)),
            ("x-max-length", int(100)),
        ]),
    )
    .await;
    for i in 0..1000 {
        publish_with(&ch, "", "lim", &body_of(i), props_of(i)).await;
    }
    assert_eq!(ready(&ch, "lim").await, 100);
    for i in 900..1000 {
        let m = get(&ch, "lim").await.expect("message");
        check(&m.delivery, i, "lim");
    }
    assert!(get(&ch, "lim").await.is_none());
}

#[tokio::test]
async fn page_files_go_with_purge_and_delete() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "del", table(&[("x-max-in-memory-length", int(5))])).await;
    for i in 0..200 {
        publish_with(&ch, "", "del", &body_of(i), props_of(i)).await;
    }
    assert_eq!(ready(&ch, "del").await, 200);
    let q = queue(&broker, "del");
    let files = q.page_files();
    assert!(!files.is_empty());
    assert!(files.iter().all(|f| f.exists()));
    let purged = ch
        .queue_purge("del".into(), Default::default())
        .await
        .unwrap();
    assert_eq!(purged, 200);
    // (page_files waits for the page I/O thread, which deletes them.)
    assert!(q.page_files().is_empty());
    assert!(
        files.iter().all(|f| !f.exists()),
        "purge removes page files"
    );
    assert!(q.page_files().is_empty());

    for i in 0..200 {
        publish_with(&ch, "", "del", &body_of(i), props_of(i)).await;
    }
    assert_eq!(ready(&ch, "del").await, 200);
    let files = q.page_files();
    assert!(!files.is_empty());
    let deleted = ch
        .queue_delete("del".into(), Default::default())
        .await
        .unwrap();
    assert_eq!(deleted, 200);
    assert!(q.page_files().is_empty());
    assert!(
        files.iter().all(|f| !f.exists()),
        "delete removes page files"
    );
    broker.assert_healthy().await;
}

/// The page files (`*.page`) in `dir`.
fn page_files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "page"))
                .count()
        })
        .unwrap_or(0)
}

/// Two brokers in one process page on their own: each has its page
/// directory, bounds and in-memory count, and one paging leaves the
/// other's untouched.
#[tokio::test]
async fn brokers_in_one_process_page_independently() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestBroker::start_with(|c| c.storage.data_dir = dir_a.path().to_path_buf()).await;
    let b = TestBroker::start_with(|c| c.storage.data_dir = dir_b.path().to_path_buf()).await;
    let (pages_a, pages_b) = (&a.broker.pages, &b.broker.pages);
    assert_eq!(pages_a.dir().unwrap(), dir_a.path().join("pages"));
    assert_eq!(pages_b.dir().unwrap(), dir_b.path().join("pages"));
    // A pages past 64 KiB per queue; B keeps the defaults.
    pages_a.set_limits(64 << 10, 1 << 20);
    assert_eq!(
        pages_b.limits(),
        (
            broker::broker::queue::paging::DEFAULT_QUEUE_MEMORY_BYTES,
            broker::broker::queue::paging::DEFAULT_GLOBAL_MEMORY_BYTES
        )
    );

    const COUNT: usize = 200;
    let body = vec![b'x'; 4096];
    let (_ca, ch_a) = a.channel().await;
    declare(&ch_a, "q", FieldTable::default()).await;
    for _ in 0..COUNT {
        publish(&ch_a, "", "q", &body).await;
    }
    assert_eq!(ready(&ch_a, "q").await, COUNT as u32);
    let q_a = queue(&a, "q");
    assert!(
        q_a.paged_count() > COUNT / 2,
        "paged: {}",
        q_a.paged_count()
    );
    assert!(page_files_in(&dir_a.path().join("pages")) > 0);
    let in_memory_a = pages_a.in_memory();
    assert!(in_memory_a > 0 && in_memory_a < 128 << 10, "{in_memory_a}");
    // B saw none of it.
    assert_eq!(pages_b.in_memory(), 0);
    assert_eq!(page_files_in(&dir_b.path().join("pages")), 0);

    // The same backlog on B stays in memory (under B's 8 MiB bound) and
    // counts on B alone.
    let (_cb, ch_b) = b.channel().await;
    declare(&ch_b, "q", FieldTable::default()).await;
    for _ in 0..COUNT {
        publish(&ch_b, "", "q", &body).await;
    }
    assert_eq!(ready(&ch_b, "q").await, COUNT as u32);
    assert_eq!(queue(&b, "q").paged_count(), 0);
    assert_eq!(page_files_in(&dir_b.path().join("pages")), 0);
    assert!(pages_b.in_memory() >= COUNT * body.len());
    assert_eq!(pages_a.in_memory(), in_memory_a);

    // Deleting A's queue empties A's budget and directory, not B's.
    let in_memory_b = pages_b.in_memory();
    ch_a.queue_delete("q".into(), Default::default())
        .await
        .unwrap();
    assert_eq!(pages_a.in_memory(), 0);
    pages_a.settle_io(); // the page I/O thread deletes the files
    assert_eq!(page_files_in(&dir_a.path().join("pages")), 0);
    assert_eq!(pages_b.in_memory(), in_memory_b);
    assert_eq!(ready(&ch_b, "q").await, COUNT as u32);
    a.assert_healthy().await;
    b.assert_healthy().await;
}

fn persistent(i: usize) -> BasicProperties {
    props_of(i).with_delivery_mode(2)
}

async fn durable_paged(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-max-in-memory-length", int(100))]),
    )
    .await
    .expect("declare");
}

async fn publish_confirmed(ch: &Channel, queue: &str, range: std::ops::Range<usize>) {
    ch.confirm_select(Default::default()).await.unwrap();
    let mut confirms = vec![];
    for i in range {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                &body_of(i),
                persistent(i),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_paged_messages_survive_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    const COUNT: usize = 3000;
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        durable_paged(&ch, "dq").await;
        publish_confirmed(&ch, "dq", 0..COUNT).await;
        // The first 500 are consumed and acked (read back from pages).
        for i in 0..500 {
            let m = ch
                .basic_get("dq".into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
                .expect("message");
            check(&m.delivery, i, "dq");
            m.delivery.ack(Default::default()).await.unwrap();
        }
        // 10 more are delivered and left unacked.
        for i in 500..510 {
            let m = ch
                .basic_get("dq".into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
                .expect("message");
            check(&m.delivery, i, "dq");
        }
        broker.stop();
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    durable_paged(&ch, "dq").await;
    for i in 500..COUNT {
        let m = ch
            .basic_get("dq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("message after restart");
        check(&m.delivery, i, "dq");
        assert_eq!(m.delivery.redelivered, i < 510, "redelivered flag of {i}");
        assert_eq!(*m.delivery.properties.delivery_mode(), Some(2));
    }
    assert!(ch
        .basic_get("dq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_paged_persistent_messages_stay_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        durable_paged(&ch, "pq").await;
        publish_confirmed(&ch, "pq", 0..2000).await;
        let purged = ch
            .queue_purge("pq".into(), Default::default())
            .await
            .unwrap();
        assert_eq!(purged, 2000);
        publish_confirmed(&ch, "pq", 2000..2300).await;
        broker.stop();
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    durable_paged(&ch, "pq").await;
    for i in 2000..2300 {
        let m = ch
            .basic_get("pq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("message after restart");
        check(&m.delivery, i, "pq");
    }
    assert!(ch
        .basic_get("pq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    broker.stop();
}

/// The broker process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(broker: &BrokerProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.child.id()))
        .expect("broker status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

/// A persistent backlog much larger than the queue's memory bound comes
/// back after a restart without ever being in memory at once: recovery
/// hands the queue one message at a time and the queue pages as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_backlog_is_recovered_into_pages_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    const COUNT: usize = 16_000;
    let body = |i: usize| {
        let mut b = format!("{i:08}").into_bytes();
        b.resize(10 * 1024, b'.');
        b
    };
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        durable_paged(&ch, "backlog").await;
        ch.confirm_select(Default::default()).await.unwrap();
        for chunk in (0..COUNT).collect::<Vec<_>>().chunks(1000) {
            let mut confirms = vec![];
            for &i in chunk {
                let props = BasicProperties::default().with_delivery_mode(2);
                confirms.push(
                    ch.basic_publish(
                        "".into(),
                        "backlog".into(),
                        Default::default(),
                        &body(i),
                        props,
                    )
                    .await
                    .unwrap(),
                );
            }
            for c in confirms {
                assert!(c.await.unwrap().is_ack());
            }
        }
        broker.stop();
    }
    // 160 MiB of bodies on disk; the restarted broker's peak memory stays
    // far below that (before recovery streamed, it held every segment).
    let broker = BrokerProcess::start(dir.path()).await;
    let peak_mib = peak_rss_kib(&broker) / 1024;
    assert!(
        peak_mib < 100,
        "peak RSS after recovering 160 MiB: {peak_mib} MiB"
    );
    let (_c, ch) = broker.channel().await;
    let q = ch
        .queue_declare(
            "backlog".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count() as usize, COUNT);
    for i in 0..3 {
        let m = ch
            .basic_get("backlog".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("message after restart");
        assert_eq!(m.delivery.data, body(i));
    }
    broker.stop();
}

//! Partitioned streams (`x-super-stream`) and consumer groups: routing,
//! per-key order, exclusivity within a group, every group sees everything,
//! cooperative rebalance, and resuming from committed offsets after a
//! restart.

use crate::common::*;
use broker::broker::exchange::super_stream::partition_of;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn declare_super_stream(ch: &Channel, name: &str, partitions: i32) {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Custom("x-super-stream".into()),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-partitions", AMQPValue::LongInt(partitions))]),
    )
    .await
    .expect("declare super stream");
}

/// Publishes (key, body) pairs to the super stream and waits for confirms.
async fn publish_keyed(ch: &Channel, exchange: &str, messages: &[(String, String)]) {
    let mut confirms = Vec::new();
    for (key, body) in messages {
        confirms.push(
            ch.basic_publish(
                exchange.into(),
                key.as_str().into(),
                Default::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
}

/// `per_key` messages for each of `keys` keys, interleaved: ("k3", "k3:7").
fn keyed(keys: usize, per_key: usize, from: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for seq in from..from + per_key {
        for k in 0..keys {
            out.push((format!("k{k}"), format!("k{k}:{seq}")));
        }
    }
    out
}

fn long_header(d: &lapin::message::Delivery, name: &str) -> i64 {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("header {name} missing or not a long: {other:?}"),
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// What one group member received: (partition, offset, body).
type Received = Arc<Mutex<Vec<(i64, i64, String)>>>;

/// A group member on its own connection that acks everything it gets
/// until its consumer ends (cancel or connection close).
struct GroupMember {
    conn: Connection,
    ch: Channel,
    tag: String,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

async fn join_group(
    broker: &TestBroker,
    super_stream: &str,
    group: &str,
    tag: &str,
    extra: &[(&str, AMQPValue)],
) -> GroupMember {
    let conn = lapin::Connection::connect(&broker.url(), Default::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(20, BasicQosOptions::default()).await.unwrap();
    let mut args = vec![("x-consumer-group", long_str(group))];
    args.extend(extra.iter().cloned());
    let mut consumer = ch
        .basic_consume(
            super_stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            table(&args),
        )
        .await
        .expect("join group");
    let received: Received = Default::default();
    let sink = received.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let partition = long_header(&d, "x-stream-partition");
            let offset = long_header(&d, "x-stream-offset");
            sink.lock().unwrap().push((
                partition,
                offset,
                String::from_utf8(d.data.clone()).unwrap(),
            ));
            if d.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    });
    GroupMember {
        conn,
        ch,
        tag: tag.to_string(),
        received,
        task,
    }
}

impl GroupMember {
    fn bodies(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    fn partitions(&self) -> BTreeSet<i64> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _, _)| *p)
            .collect()
    }

    async fn cancel(&self) {
        self.ch
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
            .expect("cancel");
    }
}

/// Waits until `members` together received `n` messages (10 s at most).
async fn wait_total(members: &[&GroupMember], n: usize) {
    for _ in 0..500 {
        let total: usize = members
            .iter()
            .map(|m| m.received.lock().unwrap().len())
            .sum();
        if total >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total: usize = members
        .iter()
        .map(|m| m.received.lock().unwrap().len())
        .sum();
    panic!("members received {total} of {n} messages");
}

/// Asserts per-key order: each key's sequence numbers increase.
fn assert_key_order(bodies: &[String]) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for body in bodies {
        let (key, seq) = body.split_once(':').unwrap();
        let seq: i64 = seq.parse().unwrap();
        if let Some(prev) = last.insert(key, seq) {
            assert!(seq > prev, "{key}: {seq} after {prev}");
        }
    }
}

fn group_info(
    broker: &TestBroker,
    super_stream: &str,
    group: &str,
) -> broker::broker::super_stream::group::GroupInfo {
    broker
        .broker
        .vhost("/")
        .unwrap()
        .groups
        .snapshot()
        .into_iter()
        .find(|g| g.super_stream == super_stream && g.name == group)
        .expect("group exists")
}

/// Waits until the group's assignment satisfies `ok`.
async fn wait_assignment(
    broker: &TestBroker,
    super_stream: &str,
    group: &str,
    ok: impl Fn(&BTreeMap<String, Vec<u32>>) -> bool,
) -> BTreeMap<String, Vec<u32>> {
    for _ in 0..250 {
        let info = group_info(broker, super_stream, group);
        let map: BTreeMap<String, Vec<u32>> = info
            .members
            .iter()
            .map(|m| (m.consumer_tag.clone(), m.partitions.clone()))
            .collect();
        if ok(&map) {
            return map;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("assignment never settled");
}

#[tokio::test]
async fn a_super_stream_has_partitions_and_routes_by_key_header_or_turn() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare_super_stream(&ch, "orders", 3).await;
    for i in 0..3 {
        ch.queue_declare(
            format!("orders-{i}").as_str().into(),
            passive(),
            FieldTable::default(),
        )
        .await
        .expect("partition exists");
    }
    let messages = keyed(20, 5, 0);
    publish_keyed(&ch, "orders", &messages).await;
    // Each partition, read as a plain stream, holds exactly the keys that
    // hash to it, in publish order.
    let (_c2, reader) = broker.channel().await;
    reader
        .basic_qos(200, BasicQosOptions::default())
        .await
        .unwrap();
    let mut seen = 0;
    for i in 0..3u32 {
        let queue = format!("orders-{i}");
        let count = reader
            .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
            .await
            .unwrap()
            .message_count() as usize;
        let mut c = reader
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                table(&[("x-stream-offset", long_str("first"))]),
            )
            .await
            .unwrap();
        let mut bodies = Vec::new();
        for _ in 0..count {
            let d = next(&mut c).await;
            d.ack(BasicAckOptions::default()).await.unwrap();
            bodies.push(String::from_utf8(d.data).unwrap());
        }
        for body in &bodies {
            let key = body.split_once(':').unwrap().0;
            assert_eq!(partition_of(key, 3), i, "{key} in the wrong partition");
        }
        assert_key_order(&bodies);
        seen += count;
    }
    assert_eq!(seen, messages.len());

    // x-partition names the partition; an empty key takes turns.
    ch.basic_publish(
        "orders".into(),
        "k1".into(),
        Default::default(),
        b"explicit",
        BasicProperties::default().with_headers(table(&[("x-partition", AMQPValue::LongInt(2))])),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let counts = |ch: Channel| async move {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                ch.queue_declare(
                    format!("orders-{i}").as_str().into(),
                    passive(),
                    FieldTable::default(),
                )
                .await
                .unwrap()
                .message_count(),
            );
        }
        v
    };
    let before = counts(ch.clone()).await;
    publish_keyed(
        &ch,
        "orders",
        &[
            ("".into(), "a".into()),
            ("".into(), "b".into()),
            ("".into(), "c".into()),
        ],
    )
    .await;
    let after = counts(ch.clone()).await;
    assert_eq!(
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        vec![1, 1, 1],
        "empty keys go round-robin"
    );

    // Raising the partition count adds partitions; lowering changes nothing.
    declare_super_stream(&ch, "orders", 5).await;
    ch.queue_declare("orders-4".into(), passive(), FieldTable::default())
        .await
        .expect("new partition");
    declare_super_stream(&ch, "orders", 2).await;
    ch.queue_declare("orders-4".into(), passive(), FieldTable::default())
        .await
        .expect("partition kept");

    // A super stream must be durable.
    let err = ch
        .exchange_declare(
            "flimsy".into(),
            ExchangeKind::Custom("x-super-stream".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - invalid property 'non-durable' for exchange 'flimsy' in vhost '/'".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_reads_everything_and_members_share_the_partitions() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare_super_stream(&ch, "orders", 3).await;
    let first = [("x-stream-offset", long_str("first"))];
    let a1 = join_group(&broker, "orders", "A", "a1", &first).await;
    let a2 = join_group(&broker, "orders", "A", "a2", &first).await;
    let b1 = join_group(&broker, "orders", "B", "b1", &first).await;
    wait_assignment(&broker, "orders", "A", |m| {
        m.values().all(|p| !p.is_empty())
    })
    .await;
    let messages = keyed(30, 10, 0);
    publish_keyed(&ch, "orders", &messages).await;
    wait_total(&[&a1, &a2], messages.len()).await;
    wait_total(&[&b1], messages.len()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Within A: every message exactly once, members on disjoint partitions.
    let mut all: Vec<String> = a1.bodies();
    all.extend(a2.bodies());
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), messages.len(), "no message twice within group A");
    assert_eq!(unique.len(), messages.len());
    assert!(a1.partitions().is_disjoint(&a2.partitions()));
    assert_eq!(a1.partitions().len() + a2.partitions().len(), 3);
    // Per-key order holds for each member, and B got everything in order.
    assert_key_order(&a1.bodies());
    assert_key_order(&a2.bodies());
    assert_eq!(b1.bodies().len(), messages.len());
    assert_key_order(&b1.bodies());
    // Deliveries name their partition, the offset in it, and the member's
    // assignment.
    let info = group_info(&broker, "orders", "A");
    assert_eq!(info.partitions.len(), 3);
    assert!(info
        .partitions
        .iter()
        .all(|p| p.lag == 0 && p.owner.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_moves_only_the_partitions_that_change_owner() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare_super_stream(&ch, "events", 3).await;
    let m1 = join_group(&broker, "events", "G", "m1", &[]).await;
    let before = wait_assignment(&broker, "events", "G", |m| m["m1"].len() == 3).await;
    assert_eq!(before["m1"], vec![0, 1, 2]);
    let m2 = join_group(&broker, "events", "G", "m2", &[]).await;
    let two = wait_assignment(&broker, "events", "G", |m| {
        m.get("m2").is_some_and(|p| p.len() == 1)
    })
    .await;
    // m1 kept two of its partitions; only one moved.
    assert_eq!(two["m1"].len(), 2);
    let m3 = join_group(&broker, "events", "G", "m3", &[]).await;
    let three = wait_assignment(&broker, "events", "G", |m| {
        m.get("m3").is_some_and(|p| p.len() == 1)
    })
    .await;
    assert!(three["m1"].iter().all(|p| two["m1"].contains(p)));
    assert_eq!(three["m2"], two["m2"]);
    // A fourth member stands by.
    let m4 = join_group(&broker, "events", "G", "m4", &[]).await;
    let four = wait_assignment(&broker, "events", "G", |m| m.contains_key("m4")).await;
    assert!(four["m4"].is_empty());
    assert_eq!(four["m1"], three["m1"]);

    // m2 leaves: its partition goes to the stand-by; the others keep theirs.
    m2.cancel().await;
    let after = wait_assignment(&broker, "events", "G", |m| {
        !m.contains_key("m2") && m["m4"].len() == 1
    })
    .await;
    assert_eq!(after["m4"], three["m2"]);
    assert_eq!(after["m1"], three["m1"]);
    assert_eq!(after["m3"], three["m3"]);
    let messages = keyed(12, 5, 0);
    publish_keyed(&ch, "events", &messages).await;
    wait_total(&[&m1, &m3, &m4], messages.len()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut all = m1.bodies();
    all.extend(m3.bodies());
    all.extend(m4.bodies());
    assert_eq!(all.len(), messages.len());
    drop((m1, m3, m4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_handover_does_not_pause_members_that_keep_their_partitions() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare_super_stream(&ch, "tasks", 2).await;
    // A member that never acks: it holds its deliveries.
    let slow_conn = lapin::Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let slow_ch = slow_conn.create_channel().await.unwrap();
    slow_ch
        .basic_qos(5, BasicQosOptions::default())
        .await
        .unwrap();
    let mut slow = slow_ch
        .basic_consume(
            "tasks".into(),
            "slow".into(),
            BasicConsumeOptions::default(),
            table(&[("x-consumer-group", long_str("W"))]),
        )
        .await
        .unwrap();
    wait_assignment(&broker, "tasks", "W", |m| m["slow"] == vec![0, 1]).await;
    // Explicit partitions: 10 to each.
    let mut confirms = Vec::new();
    for i in 0..20 {
        confirms.push(
            ch.basic_publish(
                "tasks".into(),
                "".into(),
                Default::default(),
                format!("t{i}").as_bytes(),
                BasicProperties::default()
                    .with_headers(table(&[("x-partition", AMQPValue::LongInt(i % 2))])),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        c.await.unwrap();
    }
    // The slow member holds 5 + 5 unacked.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next(&mut slow).await);
    }
    // A second member joins: one partition must move from the slow member,
    // and waits for its unacked deliveries.
    let fast = join_group(&broker, "tasks", "W", "fast", &[]).await;
    let split = wait_assignment(&broker, "tasks", "W", |m| {
        m.get("fast").is_some_and(|p| p.len() == 1)
    })
    .await;
    let kept = split["slow"][0];
    let moved = split["fast"][0];
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fast.bodies().is_empty(),
        "the new owner waits for the old owner's acks"
    );
    // The slow member keeps consuming its other partition meanwhile: ack
    // what it holds from the kept partition and it gets more from there.
    for d in held
        .iter()
        .filter(|d| long_header(d, "x-stream-partition") == kept as i64)
    {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let more = next(&mut slow).await;
    assert_eq!(long_header(&more, "x-stream-partition"), kept as i64);
    // The member learns its new assignment from the delivery.
    match more
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-consumer-group-partitions"))
    {
        Some(AMQPValue::FieldArray(a)) => {
            assert_eq!(a.as_slice(), &[AMQPValue::LongLongInt(kept as i64)])
        }
        other => panic!("assignment header missing: {other:?}"),
    }
    // The slow member's connection dies: its unacked deliveries are
    // dropped and the fast member takes both partitions, each from after
    // the group's last committed offset: all ten of the moved partition
    // (nothing there was acked; the five the slow member held come again:
    // at least once) and the kept partition from offset 5.
    drop(slow);
    slow_conn.close(200, "bye".into()).await.unwrap();
    wait_total(&[&fast], 15).await;
    let mut by_partition: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for (p, o, _) in fast.received.lock().unwrap().iter() {
        by_partition.entry(*p).or_default().insert(*o);
    }
    assert_eq!(by_partition[&(moved as i64)], (0..10).collect());
    assert_eq!(by_partition[&(kept as i64)], (5..10).collect());
    drop(fast);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_each_message_with_one_member_and_loses_none() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare_super_stream(&ch, "churn", 4).await;
    let first = [("x-stream-offset", long_str("first"))];
    let mut members = vec![join_group(&broker, "churn", "C", "c0", &first).await];
    let mut gone = Vec::new();
    let mut killed = Vec::new();
    let mut total = 0;
    for round in 0..8 {
        let batch = keyed(16, 5, round * 5);
        total += batch.len();
        let publisher = {
            let ch = ch.clone();
            tokio::spawn(async move { publish_keyed(&ch, "churn", &batch).await })
        };
        // Members come and go while messages flow; one dies mid-way: it
        // stops acking and its connection goes.
        if round == 4 && members.len() > 1 {
            let victim: GroupMember = members.remove(0);
            victim.task.abort();
            let _ = victim.conn.close(320, "killed".into()).await;
            killed.push(victim);
        } else if round % 3 == 2 && members.len() > 1 {
            let leaving = members.remove(0);
            leaving.cancel().await;
            gone.push(leaving);
        } else {
            members
                .push(join_group(&broker, "churn", "C", &format!("c{}", round + 1), &first).await);
        }
        publisher.await.unwrap();
    }
    assert_eq!(killed.len(), 1);
    let everyone: Vec<&GroupMember> = members
        .iter()
        .chain(gone.iter())
        .chain(killed.iter())
        .collect();
    wait_total(&everyone, total).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &everyone {
        assert_key_order(&m.bodies());
        for body in m.bodies() {
            *seen.entry(body).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), total, "every message was seen");
    // Only a message the dead member got and never acked may come twice
    // (at least once); everything else went to exactly one member.
    let died_with: BTreeSet<String> = killed[0].bodies().into_iter().collect();
    for (body, count) in &seen {
        assert!(
            *count == 1 || (*count == 2 && died_with.contains(body)),
            "{body} delivered {count} times"
        );
    }
    for m in members.into_iter().chain(gone).chain(killed) {
        m.task.abort();
        let _ = m.conn.close(200, "bye".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_its_committed_offsets_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let messages = keyed(10, 10, 0);
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        ch.confirm_select(Default::default()).await.unwrap();
        declare_super_stream(&ch, "ledger", 2).await;
        publish_keyed(&ch, "ledger", &messages).await;
        let (_c2, member) = broker.channel().await;
        member
            .basic_qos(1, BasicQosOptions::default())
            .await
            .unwrap();
        let mut c = member
            .basic_consume(
                "ledger".into(),
                "only".into(),
                BasicConsumeOptions::default(),
                table(&[
                    ("x-consumer-group", long_str("L")),
                    ("x-stream-offset", long_str("first")),
                ]),
            )
            .await
            .unwrap();
        for _ in 0..40 {
            let d = next(&mut c).await;
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        // Committed offsets reach disk within sled's flush interval.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        broker.kill();
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut c = ch
        .basic_consume(
            "ledger".into(),
            "again".into(),
            BasicConsumeOptions::default(),
            table(&[("x-consumer-group", long_str("L"))]),
        )
        .await
        .unwrap();
    let mut rest = Vec::new();
    for _ in 0..60 {
        let d = next(&mut c).await;
        d.ack(BasicAckOptions::default()).await.unwrap();
        rest.push(String::from_utf8(d.data).unwrap());
    }
    assert_nothing(&mut c, 300).await;
    assert_eq!(rest.len(), 60, "exactly the unacked remainder");
}

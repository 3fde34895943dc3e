//! Consumer groups over a partitioned stream (the Kafka model, over AMQP
//! 0-9-1). A consumer joins group `G` by consuming from the super stream's
//! name with `x-consumer-group: G`. Each partition belongs to exactly one
//! live member; members beyond the partition count stand by. Different
//! groups read independently.
//!
//! - Offsets: a member's acks move the group's committed offset for that
//!   partition (stored like a named consumer's, under the group's name on
//!   each partition stream); whoever takes a partition over resumes after
//!   it.
//! - Rebalance (a member joins or leaves, or its channel or connection
//!   goes): assignment is balanced (counts differ by at most one, earlier
//!   members take the extra ones) and sticky (a member keeps what it had
//!   while that stays balanced). Only partitions that move are touched:
//!   the old owner's reader stops at once, its unacked deliveries from
//!   that partition are waited for (acked, or dropped with its channel; at
//!   most `HANDOVER_WAIT`), then the new owner starts. Everyone else keeps
//!   consuming without a pause.
//! - Signals: every delivery carries `x-stream-partition` (index) and
//!   `x-consumer-group-partitions` (the member's current assignment, a
//!   list of indexes), so a member sees a revocation with its next
//!   delivery; the management API shows assignments at any time.

use crate::broker::queue::stream::{Filter, OffsetSpec, CONSUMER_NAME_ARG};
use crate::broker::queue::{Consumer, Queue};
use crate::protocol::{AMQPValue, FieldTable};
use crate::store::stream_log::long_header_field;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Longest wait for an old owner's unacked deliveries before the new
/// owner starts anyway (at-least-once: they may then be seen twice).
pub const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// A partition reader: its consumer and the partition queue.
type PartitionReader = (Arc<Consumer>, Arc<Queue>);

/// The consumer argument that joins a group.
pub const GROUP_ARG: &str = "x-consumer-group";

/// What a group needs from the vhost of its super stream, held weakly
/// (the vhost holds the groups). Used on joins, leaves and rebalances,
/// never per message.
pub trait GroupHost: Send + Sync {
    /// The partitions of super stream `name`, by index.
    fn partitions(&self, name: &str) -> Vec<Arc<Queue>>;

    /// The vhost's consumer groups (to forget emptied ones).
    fn groups(&self) -> &ConsumerGroups;
}

#[derive(Default)]
pub struct ConsumerGroups {
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    next_member: AtomicU64,
}

pub struct Group {
    pub super_stream: String,
    pub name: String,
    vhost: Weak<dyn GroupHost>,
    state: Mutex<GroupState>,
}

#[derive(Default)]
struct GroupState {
    /// In join order.
    members: Vec<Arc<Member>>,
    /// Partition index -> owning member id.
    owners: BTreeMap<u32, u64>,
    /// Where a partition without a committed offset starts (the first
    /// member's `x-stream-offset`; `next` when absent).
    start: Option<OffsetSpec>,
    /// Where the group began reading each partition that has no committed
    /// offset yet: a later owner starts there too, so deliveries an owner
    /// never acked are not skipped.
    began: BTreeMap<u32, u64>,
    rebalances: u64,
}

/// One basic.consume in a group.
pub struct Member {
    pub id: u64,
    /// Tag, prefetch and channel of the member's basic.consume.
    pub template: Arc<Consumer>,
    /// Partition index -> (the reader's consumer, the partition queue).
    readers: Mutex<BTreeMap<u32, PartitionReader>>,
    /// Header fields for deliveries of each partition it owns.
    headers: Mutex<BTreeMap<u32, Arc<Mutex<Bytes>>>>,
    assignment: Mutex<Vec<u32>>,
    group: Weak<Group>,
}

/// What the management API shows of a group.
pub struct GroupInfo {
    pub super_stream: String,
    pub name: String,
    pub members: Vec<MemberInfo>,
    pub partitions: Vec<PartitionInfo>,
    pub rebalances: u64,
}

pub struct MemberInfo {
    pub consumer_tag: String,
    pub channel: (u64, u16),
    pub partitions: Vec<u32>,
}

pub struct PartitionInfo {
    pub index: u32,
    pub queue: String,
    pub owner: Option<String>,
    /// Last acked offset of the group on this partition.
    pub committed: Option<u64>,
    /// Messages after the committed offset (or all retained, if none).
    pub lag: u64,
}

impl ConsumerGroups {
    /// Adds a member to group `group` of super stream `super_stream`.
    pub fn join<H: GroupHost + 'static>(
        &self,
        vhost: &Arc<H>,
        super_stream: &str,
        group: &str,
        template: Arc<Consumer>,
        start: Option<OffsetSpec>,
    ) -> Arc<Member> {
        let host: Weak<dyn GroupHost> = Arc::<H>::downgrade(vhost);
        let group = self
            .groups
            .lock()
            .entry((super_stream.to_string(), group.to_string()))
            .or_insert_with(|| {
                Arc::new(Group {
                    super_stream: super_stream.to_string(),
                    name: group.to_string(),
                    vhost: host,
                    state: Mutex::new(GroupState::default()),
                })
            })
            .clone();
        let member = Arc::new(Member {
            id: self.next_member.fetch_add(1, Ordering::Relaxed),
            template,
            readers: Mutex::new(BTreeMap::new()),
            headers: Mutex::new(BTreeMap::new()),
            assignment: Mutex::new(Vec::new()),
            group: Arc::downgrade(&group),
        });
        {
            let mut st = group.state.lock();
            if st.members.is_empty() && st.owners.is_empty() {
                st.start = start;
            }
            st.members.push(member.clone());
        }
        group.rebalance(BTreeMap::new());
        member
    }

    /// Forgets groups without members.
    fn prune(&self) {
        self.groups
            .lock()
            .retain(|_, g| !g.state.lock().members.is_empty());
    }

    pub fn snapshot(&self) -> Vec<GroupInfo> {
        let groups: Vec<Arc<Group>> = self.groups.lock().values().cloned().collect();
        let mut infos: Vec<GroupInfo> = groups.iter().map(|g| g.info()).collect();
        infos.sort_by(|a, b| (&a.super_stream, &a.name).cmp(&(&b.super_stream, &b.name)));
        infos
    }
}

impl Member {
    /// The member's basic.cancel, channel close or connection loss.
    pub fn leave(self: &Arc<Self>) {
        let Some(group) = self.group.upgrade() else {
            return;
        };
        let departing = self.stop_all();
        {
            let mut st = group.state.lock();
            st.members.retain(|m| m.id != self.id);
        }
        group.rebalance(departing);
        if let Some(vhost) = group.vhost.upgrade() {
            vhost.groups().prune();
        }
    }

    pub fn partitions(&self) -> Vec<u32> {
        self.assignment.lock().clone()
    }

    fn stop(&self, partition: u32) -> Option<PartitionReader> {
        let (consumer, queue) = self.readers.lock().remove(&partition)?;
        if let Some(stream) = queue.stream() {
            stream.remove_reader_of(&consumer);
        }
        self.headers.lock().remove(&partition);
        Some((consumer, queue))
    }

    fn stop_all(&self) -> BTreeMap<u32, PartitionReader> {
        let partitions: Vec<u32> = self.readers.lock().keys().copied().collect();
        partitions
            .into_iter()
            .filter_map(|p| self.stop(p).map(|r| (p, r)))
            .collect()
    }

    /// Header fields for deliveries of `partition`: its index and the
    /// member's whole assignment.
    fn header_fields(&self, partition: u32) -> Bytes {
        let assignment = self.assignment.lock().clone();
        let mut fields = BytesMut::with_capacity(64 + 9 * assignment.len());
        long_header_field(&mut fields, "x-stream-partition", partition as i64);
        let key = "x-consumer-group-partitions";
        fields.put_u8(key.len() as u8);
        fields.put_slice(key.as_bytes());
        fields.put_u8(b'A');
        fields.put_u32(9 * assignment.len() as u32);
        for p in assignment {
            fields.put_u8(b'l');
            fields.put_i64(p as i64);
        }
        fields.freeze()
    }

    fn set_assignment(&self, partitions: Vec<u32>) {
        *self.assignment.lock() = partitions;
        let headers: Vec<(u32, Arc<Mutex<Bytes>>)> = self
            .headers
            .lock()
            .iter()
            .map(|(p, h)| (*p, h.clone()))
            .collect();
        for (partition, header) in headers {
            *header.lock() = self.header_fields(partition);
        }
    }
}

impl Group {
    fn info(&self) -> GroupInfo {
        let partitions = self
            .vhost
            .upgrade()
            .map(|v| v.partitions(&self.super_stream))
            .unwrap_or_default();
        let st = self.state.lock();
        let tag_of = |id: u64| {
            st.members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.template.tag.to_string())
        };
        GroupInfo {
            super_stream: self.super_stream.clone(),
            name: self.name.clone(),
            members: st
                .members
                .iter()
                .map(|m| MemberInfo {
                    consumer_tag: m.template.tag.to_string(),
                    channel: m.template.sink.channel_key(),
                    partitions: m.partitions(),
                })
                .collect(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(index, queue)| {
                    let (committed, lag) = match queue.stream() {
                        Some(stream) => {
                            let committed = stream.tracked_offset(&self.name);
                            let (first, next) = stream.log.bounds();
                            let from = committed.map_or(first, |c| (c + 1).max(first));
                            (committed, next.saturating_sub(from))
                        }
                        None => (None, 0),
                    };
                    PartitionInfo {
                        index: index as u32,
                        queue: queue.name.clone(),
                        owner: st.owners.get(&(index as u32)).and_then(|id| tag_of(*id)),
                        committed,
                        lag,
                    }
                })
                .collect(),
            rebalances: st.rebalances,
        }
    }

    /// Recomputes the assignment and hands over the partitions that move.
    /// `departing` holds readers of a member that just left, still to be
    /// waited for.
    fn rebalance(self: &Arc<Self>, mut departing: BTreeMap<u32, PartitionReader>) {
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        let partitions = vhost.partitions(&self.super_stream);
        let count = partitions.len() as u32;
        let mut st = self.state.lock();
        let new_owners = assign(count, &st.members, &st.owners);
        st.rebalances += 1;
        // Where the group begins a partition it has no committed offset on
        // is fixed now, at the consume, not when the reader task gets to
        // run: messages published right after consume-ok are not skipped.
        for (index, queue) in partitions.iter().enumerate() {
            let index = index as u32;
            if !new_owners.contains_key(&index) || st.began.contains_key(&index) {
                continue;
            }
            if let Some(stream) = queue.stream() {
                if stream.tracked_offset(&self.name).is_none() {
                    let start = stream.start_offset(st.start.or(Some(OffsetSpec::Next)), None);
                    st.began.insert(index, start);
                }
            }
        }
        // Assignment headers first, so that readers started below carry it.
        for member in &st.members {
            let mine: Vec<u32> = new_owners
                .iter()
                .filter(|(_, id)| **id == member.id)
                .map(|(p, _)| *p)
                .collect();
            member.set_assignment(mine);
        }
        for partition in 0..count {
            let old = st.owners.get(&partition).copied();
            let new = new_owners.get(&partition).copied();
            if old == new {
                continue;
            }
            let previous = match old.and_then(|id| st.members.iter().find(|m| m.id == id)) {
                Some(member) => member.stop(partition),
                None => departing.remove(&partition),
            };
            if let Some(new_id) = new {
                let group = self.clone();
                tokio::spawn(async move {
                    if let Some((consumer, _)) = previous {
                        wait_for_acks(&consumer).await;
                    }
                    group.start_partition(partition, new_id);
                });
            }
        }
        st.owners = new_owners;
        tracing::debug!(
            super_stream = %self.super_stream,
            group = %self.name,
            members = st.members.len(),
            partitions = count,
            "consumer group rebalanced"
        );
    }

    /// Starts `member_id`'s reader on `partition`, if it still owns it.
    fn start_partition(&self, partition: u32, member_id: u64) {
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        let mut st = self.state.lock();
        if st.owners.get(&partition) != Some(&member_id) {
            return; // moved again meanwhile
        }
        let Some(member) = st.members.iter().find(|m| m.id == member_id).cloned() else {
            return;
        };
        let Some(queue) = vhost
            .partitions(&self.super_stream)
            .get(partition as usize)
            .cloned()
        else {
            return;
        };
        let Some(stream) = queue.stream().cloned() else {
            return;
        };
        if member.readers.lock().contains_key(&partition) {
            return;
        }
        let start = match (stream.tracked_offset(&self.name), st.began.get(&partition)) {
            (Some(committed), _) => {
                stream.start_offset(Some(OffsetSpec::Offset(committed + 1)), None)
            }
            (None, Some(&began)) => stream.start_offset(Some(OffsetSpec::Offset(began)), None),
            (None, None) => {
                let start = stream.start_offset(st.start.or(Some(OffsetSpec::Next)), None);
                st.began.insert(partition, start);
                start
            }
        };
        let mut arguments = FieldTable::default();
        arguments.insert(
            CONSUMER_NAME_ARG.into(),
            AMQPValue::LongString(self.name.as_str().into()),
        );
        let template = &member.template;
        let consumer = Arc::new(Consumer {
            tag: template.tag.clone(),
            no_ack: false,
            exclusive: false,
            priority: template.priority,
            prefetch: template.prefetch,
            unacked: Default::default(),
            arguments,
            sink: template.sink.clone(),
        });
        let headers = Arc::new(Mutex::new(member.header_fields(partition)));
        member.headers.lock().insert(partition, headers.clone());
        member
            .readers
            .lock()
            .insert(partition, (consumer.clone(), queue.clone()));
        drop(st);
        stream.start_reader(&queue, consumer, start, None::<Filter>, Some(headers));
    }
}

/// Waits until a stopped reader's deliveries are all acked (or dropped
/// with their channel), at most `HANDOVER_WAIT`.
async fn wait_for_acks(consumer: &Consumer) {
    let deadline = Instant::now() + HANDOVER_WAIT;
    while consumer.unacked.load(Ordering::Relaxed) > 0 {
        if Instant::now() > deadline {
            tracing::warn!(
                consumer_tag = %consumer.tag,
                "partition handed over with deliveries still unacked; they may be delivered again"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Balanced, sticky assignment of `count` partitions to `members` (join
/// order): member i gets `count / m` partitions, plus one if `i < count % m`;
/// it keeps partitions it owned while under that quota.
fn assign(count: u32, members: &[Arc<Member>], owners: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
    let m = members.len() as u32;
    let mut result = BTreeMap::new();
    if m == 0 {
        return result;
    }
    let quota = |i: usize| count / m + u32::from((i as u32) < count % m);
    let mut held = vec![0u32; members.len()];
    let index_of: HashMap<u64, usize> =
        members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    for (&partition, owner) in owners {
        if partition >= count {
            continue;
        }
        if let Some(&i) = index_of.get(owner) {
            if held[i] < quota(i) {
                held[i] += 1;
                result.insert(partition, *owner);
            }
        }
    }
    for partition in 0..count {
        if result.contains_key(&partition) {
            continue;
        }
        if let Some(i) = (0..members.len()).find(|&i| held[i] < quota(i)) {
            held[i] += 1;
            result.insert(partition, members[i].id);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Arc<Member>> {
        (0..n)
            .map(|i| {
                Arc::new(Member {
                    id: i as u64,
                    template: Arc::new(Consumer {
                        tag: format!("m{i}").into(),
                        no_ack: false,
                        exclusive: false,
                        priority: 0,
                        prefetch: 1,
                        unacked: Default::default(),
                        arguments: FieldTable::default(),
                        sink: Arc::new(NoSink),
                    }),
                    readers: Default::default(),
                    headers: Default::default(),
                    assignment: Default::default(),
                    group: Weak::new(),
                })
            })
            .collect()
    }

    struct NoSink;
    impl crate::broker::queue::DeliverySink for NoSink {
        fn credit(&self) -> crate::broker::queue::Credit {
            crate::broker::queue::Credit::No
        }
        fn deliver(
            &self,
            _: &Arc<Consumer>,
            _: &Arc<Queue>,
            _: crate::broker::queue::QueuedMessage,
        ) {
        }
        fn cancelled(&self, _: &str) {}
        fn wake_when_writable(&self, _: Weak<Queue>) {}
        fn channel_key(&self) -> (u64, u16) {
            (0, 0)
        }
    }

    fn counts(a: &BTreeMap<u32, u64>, n: usize) -> Vec<usize> {
        (0..n as u64)
            .map(|id| a.values().filter(|v| **v == id).count())
            .collect()
    }

    #[test]
    fn assignment_is_balanced_and_sticky() {
        let all = members(3);
        let one = assign(6, &all[..1], &BTreeMap::new());
        assert_eq!(counts(&one, 1), vec![6]);
        let two = assign(6, &all[..2], &one);
        assert_eq!(counts(&two, 2), vec![3, 3]);
        // Member 0 kept three of its own; only the others moved.
        assert!(two
            .iter()
            .filter(|(_, o)| **o == 0)
            .all(|(p, _)| one[p] == 0));
        let three = assign(6, &all, &two);
        assert_eq!(counts(&three, 3), vec![2, 2, 2]);
        let moved = (0..6).filter(|p| three[p] != two[p]).count();
        assert_eq!(moved, 2, "only the new member's share moves");
        // More members than partitions: the extra ones stand by.
        let standby = assign(2, &all, &BTreeMap::new());
        assert_eq!(counts(&standby, 3), vec![1, 1, 0]);
        // Member 1 leaves: its partitions go to the others, 0's stay.
        let rest = vec![all[0].clone(), all[2].clone()];
        let after = assign(6, &rest, &three);
        assert_eq!(after.len(), 6);
        assert!((0..6).filter(|p| three[p] == 0).all(|p| after[&p] == 0));
        assert!((0..6).filter(|p| three[p] == 2).all(|p| after[&p] == 2));
    }
}

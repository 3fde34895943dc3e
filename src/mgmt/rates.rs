//! Message rates: a background task samples every queue's counters
//! (published, delivered, acked, redelivered) and depths every few seconds
//! (5 s by default, as RabbitMQ's `basic` rates mode); a rate is the change
//! between the last two samples divided by the time between them. Reading
//! the counters takes no lock on the hot path (they are atomics); the
//! queue lock is taken only for the depth, as for any management read.
//!
//! Exchanges (publish in/out) and channels (publish, confirm, deliver/get,
//! ack, redeliver) are sampled the same way from their relaxed atomics.
//!
//! The sampler also keeps the overall message counts: what every queue
//! counted, including queues deleted since, so overview totals do not drop
//! when a queue goes (counts made after a queue's last sample and before
//! its deletion are lost).

use crate::broker::exchange::Exchange;
use crate::broker::queue::Queue;
use crate::broker::registry::ChannelStats;
use crate::broker::Broker;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// RabbitMQ's default sample interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Counters and depths of one queue (or a sum of queues) at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub ready: u64,
    pub unacked: u64,
}

impl Counts {
    pub fn of(q: &Queue) -> Counts {
        let c = &q.counters;
        let (ready, _, _) = q.snapshot();
        Counts {
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            ready: ready as u64,
            unacked: q.unacked_count() as u64,
        }
    }

    /// Counter increases since `before` (depths are not summed).
    fn since(&self, before: &Counts) -> Counts {
        Counts {
            published: self.published.saturating_sub(before.published),
            delivered: self.delivered.saturating_sub(before.delivered),
            acked: self.acked.saturating_sub(before.acked),
            redelivered: self.redelivered.saturating_sub(before.redelivered),
            ready: 0,
            unacked: 0,
        }
    }

    fn add(&mut self, other: &Counts) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.redelivered += other.redelivered;
        self.ready += other.ready;
        self.unacked += other.unacked;
    }
}

/// Per-second rates, named as the management API's `<key>_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub publish: f64,
    pub deliver_get: f64,
    pub ack: f64,
    pub redeliver: f64,
    pub messages: f64,
    pub messages_ready: f64,
    pub messages_unacknowledged: f64,
}

impl Rates {
    fn between(old: &(Instant, Counts), new: &(Instant, Counts)) -> Rates {
        let secs = new.0.duration_since(old.0).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let per_sec = |a: u64, b: u64| (b as f64 - a as f64) / secs;
        let (a, b) = (&old.1, &new.1);
        Rates {
            publish: per_sec(a.published, b.published).max(0.0),
            deliver_get: per_sec(a.delivered, b.delivered).max(0.0),
            ack: per_sec(a.acked, b.acked).max(0.0),
            redeliver: per_sec(a.redelivered, b.redelivered).max(0.0),
            messages: per_sec(a.ready + a.unacked, b.ready + b.unacked),
            messages_ready: per_sec(a.ready, b.ready),
            messages_unacknowledged: per_sec(a.unacked, b.unacked),
        }
    }

    fn add(&mut self, other: &Rates) {
        self.publish += other.publish;
        self.deliver_get += other.deliver_get;
        self.ack += other.ack;
        self.redeliver += other.redeliver;
        self.messages += other.messages;
        self.messages_ready += other.messages_ready;
        self.messages_unacknowledged += other.messages_unacknowledged;
    }
}

/// Identifies one queue incarnation: a queue deleted and declared again
/// under the same name starts from zero.
type QueueKey = (String, String, usize);

fn exchange_key(vhost: &str, x: &Exchange) -> ExchangeKey {
    (
        vhost.to_string(),
        x.name.clone(),
        x as *const Exchange as usize,
    )
}

fn key_of(q: &Queue) -> QueueKey {
    (q.vhost.clone(), q.name.clone(), q as *const Queue as usize)
}

/// The last two samples of a pair of counters, oldest first.
type Pair = [Option<(Instant, (u64, u64))>; 2];

/// Per-second rates of both counters of a pair (0 until two samples).
fn pair_rates(p: &Pair) -> (f64, f64) {
    match p {
        [Some((t0, (a0, b0))), Some((t1, (a1, b1)))] => {
            let secs = t1.duration_since(*t0).as_secs_f64();
            if secs <= 0.0 {
                return (0.0, 0.0);
            }
            (
                a1.saturating_sub(*a0) as f64 / secs,
                b1.saturating_sub(*b0) as f64 / secs,
            )
        }
        _ => (0.0, 0.0),
    }
}

/// The last two samples of `N` counters, oldest first.
type Samples<const N: usize> = [Option<(Instant, [u64; N])>; 2];

/// Per-second rates of each counter of `Samples` (0 until two samples).
fn rates_of<const N: usize>(s: &Samples<N>) -> [f64; N] {
    let mut out = [0.0; N];
    if let [Some((t0, a)), Some((t1, b))] = s {
        let secs = t1.duration_since(*t0).as_secs_f64();
        if secs > 0.0 {
            for i in 0..N {
                out[i] = b[i].saturating_sub(a[i]) as f64 / secs;
            }
        }
    }
    out
}

/// Identifies one exchange incarnation (the default exchange of a vhost
/// by its name `""`).
type ExchangeKey = (String, String, usize);

/// A channel: (connection id, channel number).
type ChannelKey = (u64, u16);

/// Channel counters sampled, in this order.
pub const CHANNEL_COUNTERS: [&str; 5] = ["publish", "confirm", "deliver_get", "ack", "redeliver"];

/// The counters of `CHANNEL_COUNTERS` of one channel.
pub fn channel_counts(s: &ChannelStats) -> [u64; 5] {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    [
        get(&s.publish),
        get(&s.confirm),
        get(&s.deliver) + get(&s.deliver_no_ack) + get(&s.get) + get(&s.get_no_ack),
        get(&s.ack),
        get(&s.redeliver),
    ]
}

/// Keeps the samples of the keys still present; adds the new ones.
fn advance<K: std::hash::Hash + Eq, const N: usize>(
    old: &mut HashMap<K, Samples<N>>,
    now: Instant,
    current: Vec<(K, [u64; N])>,
) {
    let mut next = HashMap::with_capacity(current.len());
    for (key, counts) in current {
        let last = old.get(&key).and_then(|s| s[1]);
        next.insert(key, [last, Some((now, counts))]);
    }
    *old = next;
}

#[derive(Default)]
struct State {
    /// The last two samples of each live queue, oldest first.
    queues: HashMap<QueueKey, [Option<(Instant, Counts)>; 2]>,
    /// Counter increases of all queues up to the last sample.
    total: Counts,
    /// Bytes received and sent, per live connection.
    connections: HashMap<u64, Pair>,
    /// Connections opened and closed.
    churn: Pair,
    /// (publish_in, publish_out) per exchange.
    exchanges: HashMap<ExchangeKey, Samples<2>>,
    /// `CHANNEL_COUNTERS` per open channel.
    channels: HashMap<ChannelKey, Samples<5>>,
    /// Overall counts (deleted queues included) and depths at each sample,
    /// oldest first, for the overview's `samples` (at most `HISTORY`).
    history: std::collections::VecDeque<(u64, Counts)>,
}

/// Overview samples kept: 10 minutes at the default interval.
const HISTORY: usize = 120;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Sampler {
    pub interval: Duration,
    state: Mutex<State>,
}

impl Sampler {
    pub fn new(interval: Duration) -> Arc<Sampler> {
        Arc::new(Sampler {
            interval,
            state: Mutex::new(State::default()),
        })
    }

    /// Samples every `interval` until the broker or the sampler is gone.
    pub fn start(self: &Arc<Self>, broker: &Arc<Broker>) {
        let (sampler, broker) = (Arc::downgrade(self), Arc::downgrade(broker));
        let interval = self.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(s), Some(b)) = (Weak::upgrade(&sampler), Weak::upgrade(&broker)) else {
                    return;
                };
                s.sample(&b);
            }
        });
    }

    /// Takes one sample of every queue.
    pub fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let counts: Vec<(QueueKey, Counts)> = broker
            .vhosts()
            .iter()
            .flat_map(|v| v.queues())
            .map(|q| (key_of(&q), Counts::of(&q)))
            .collect();
        let bytes: Vec<(u64, (u64, u64))> = broker
            .registry
            .connections()
            .iter()
            .map(|c| {
                let recv = c.recv_bytes.load(Ordering::Relaxed);
                (c.id, (recv, c.send_bytes.load(Ordering::Relaxed)))
            })
            .collect();
        let churn = broker.registry.churn();
        let mut exchanges = Vec::new();
        for v in broker.vhosts() {
            let (i, o) = v.default_exchange_stats.get();
            exchanges.push(((v.name.clone(), String::new(), 0), [i, o]));
            for x in v.exchanges() {
                let (i, o) = x.stats.get();
                exchanges.push((exchange_key(&v.name, &x), [i, o]));
            }
        }
        let mut channels = Vec::new();
        for c in broker.registry.connections() {
            for n in c.reported_channels().unwrap_or_default() {
                if let Some(stats) = c.channel_stats(n) {
                    channels.push(((c.id, n), channel_counts(&stats)));
                }
            }
        }
        let mut st = self.state.lock();
        advance(&mut st.exchanges, now, exchanges);
        advance(&mut st.channels, now, channels);
        st.churn = [st.churn[1], Some((now, churn))];
        let mut conns = HashMap::with_capacity(bytes.len());
        for (id, b) in bytes {
            let old = st.connections.get(&id).and_then(|p| p[1]);
            conns.insert(id, [old, Some((now, b))]);
        }
        st.connections = conns;
        let mut live = HashMap::with_capacity(counts.len());
        for (key, c) in counts {
            let mut slots = st.queues.remove(&key).unwrap_or([None, None]);
            let before = slots[1].map(|(_, c)| c).unwrap_or_default();
            let increase = c.since(&before);
            st.total.add(&increase);
            slots = [slots[1], Some((now, c))];
            live.insert(key, slots);
        }
        let mut overall = st.total;
        for [_, last] in live.values() {
            if let Some((_, c)) = last {
                overall.ready += c.ready;
                overall.unacked += c.unacked;
            }
        }
        st.queues = live;
        if st.history.len() >= HISTORY {
            st.history.pop_front();
        }
        st.history.push_back((unix_ms(), overall));
    }

    /// The rates of one queue (0 until it has two samples).
    pub fn queue(&self, q: &Queue) -> Rates {
        let st = self.state.lock();
        match st.queues.get(&key_of(q)) {
            Some([Some(old), Some(new)]) => Rates::between(old, new),
            _ => Rates::default(),
        }
    }

    /// Overall samples for the last `age_s` seconds every `incr_s` seconds,
    /// newest first, as (timestamp ms, counts): at each point in time the
    /// latest sample taken at or before it.
    pub fn history(&self, age_s: u64, incr_s: u64) -> Vec<(u64, Counts)> {
        let incr_ms = incr_s.max(1) * 1000;
        let points = (age_s / incr_s.max(1)).min(HISTORY as u64 * 10);
        let st = self.state.lock();
        let Some(&(newest, _)) = st.history.back() else {
            return Vec::new();
        };
        let now = newest - newest % incr_ms;
        let mut out = Vec::new();
        for k in 0..=points {
            let Some(t) = now.checked_sub(k * incr_ms) else {
                break;
            };
            match st.history.iter().rev().find(|(ts, _)| *ts <= t) {
                Some((_, c)) => out.push((t, *c)),
                None => break,
            }
        }
        out
    }

    /// (received, sent) bytes per second of a connection.
    pub fn connection(&self, id: u64) -> (f64, f64) {
        self.state
            .lock()
            .connections
            .get(&id)
            .map_or((0.0, 0.0), pair_rates)
    }

    /// (publish_in, publish_out) per second of an exchange.
    pub fn exchange(&self, vhost: &str, x: &Exchange) -> (f64, f64) {
        let st = self.state.lock();
        let [i, o] = st
            .exchanges
            .get(&exchange_key(vhost, x))
            .map_or([0.0; 2], rates_of);
        (i, o)
    }

    /// (publish_in, publish_out) per second of a vhost's default exchange.
    pub fn default_exchange(&self, vhost: &str) -> (f64, f64) {
        let st = self.state.lock();
        let [i, o] = st
            .exchanges
            .get(&(vhost.to_string(), String::new(), 0))
            .map_or([0.0; 2], rates_of);
        (i, o)
    }

    /// Per-second rates of a channel's `CHANNEL_COUNTERS`.
    pub fn channel(&self, connection: u64, number: u16) -> [f64; 5] {
        self.state
            .lock()
            .channels
            .get(&(connection, number))
            .map_or([0.0; 5], rates_of)
    }

    /// (opened, closed) connections per second.
    pub fn churn(&self) -> (f64, f64) {
        pair_rates(&self.state.lock().churn)
    }

    /// The summed rates of the queues `keep` accepts (by vhost, name).
    pub fn sum(&self, keep: impl Fn(&str, &str) -> bool) -> Rates {
        let st = self.state.lock();
        let mut total = Rates::default();
        for ((vhost, name, _), slots) in &st.queues {
            if let [Some(old), Some(new)] = slots {
                if keep(vhost, name) {
                    total.add(&Rates::between(old, new));
                }
            }
        }
        total
    }

    /// Overall counts: everything sampled so far (deleted queues
    /// included) plus what the live `queues` counted since their last
    /// sample.
    pub fn totals(&self, queues: &[Arc<Queue>]) -> Counts {
        let st = self.state.lock();
        let mut total = st.total;
        for q in queues {
            let now = Counts::of(q);
            let before = st
                .queues
                .get(&key_of(q))
                .and_then(|s| s[1])
                .map(|(_, c)| c)
                .unwrap_or_default();
            total.add(&now.since(&before));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_change_per_second() {
        let t0 = Instant::now();
        let old = (
            t0,
            Counts {
                published: 10,
                ready: 10,
                ..Default::default()
            },
        );
        let new = (
            t0 + Duration::from_secs(5),
            Counts {
                published: 60,
                acked: 25,
                ready: 5,
                ..Default::default()
            },
        );
        let r = Rates::between(&old, &new);
        assert_eq!(r.publish, 10.0);
        assert_eq!(r.ack, 5.0);
        assert_eq!(r.messages_ready, -1.0);
        assert_eq!(Rates::between(&new, &new), Rates::default());
    }
}

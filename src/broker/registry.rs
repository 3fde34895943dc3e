//! The live connections and their channels, as management and metrics see
//! them. Connection tasks register here and keep the counters current;
//! nothing on the hot path takes a lock for it.

use crate::protocol::FieldTable;
use dashmap::DashMap;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// What management can see of one connection.
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub client_properties: FieldTable,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    pub channels: AtomicUsize,
    pub recv_bytes: AtomicU64,
    pub send_bytes: AtomicU64,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    close_requested: AtomicBool,
    close_notify: Notify,
    close_reason: parking_lot::Mutex<String>,
    /// Open channel numbers, if the connection layer reports them with
    /// `channel_opened`/`channel_closed` (None until it does).
    channel_numbers: parking_lot::Mutex<Option<BTreeSet<u16>>>,
    /// Message counters of the open channels (by number).
    channel_stats: parking_lot::Mutex<HashMap<u16, Arc<ChannelStats>>>,
    /// The TLS session, for an AMQPS connection (set once, before the
    /// connection is registered).
    pub tls: std::sync::OnceLock<TlsInfo>,
    /// The registry's channel ledger, set when the connection is added.
    ledger: std::sync::OnceLock<Arc<ChannelLedger>>,
}

/// What management reports of an AMQPS connection's TLS session.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    /// RabbitMQ's spelling: `tlsv1.3`, `tlsv1.2`.
    pub protocol: String,
    /// The negotiated suite as rustls names it (`TLS13_AES_256_GCM_SHA384`).
    pub cipher_suite: String,
    /// The client's certificate (DER), if it sent one.
    pub peer_certificate: Option<Vec<u8>>,
}

/// Message counters of one channel, as RabbitMQ's channel `message_stats`.
/// Relaxed atomics: the connection task and the queues delivering to the
/// channel bump them without a lock; management reads them.
#[derive(Debug, Default)]
pub struct ChannelStats {
    pub publish: AtomicU64,
    pub confirm: AtomicU64,
    pub return_unroutable: AtomicU64,
    pub drop_unroutable: AtomicU64,
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    pub get_empty: AtomicU64,
    pub redeliver: AtomicU64,
    pub ack: AtomicU64,
    /// Whether the channel is in confirm mode / transactional.
    pub confirm_mode: AtomicBool,
    pub transactional: AtomicBool,
    /// Since when management reads saw no activity (`idle_since`).
    pub idle: IdleMark,
}

/// Idleness as management reads see it, for RabbitMQ's `idle_since`: the
/// object's activity is a count that only grows (messages in and out);
/// when a read sees the same count as the read before, the object has been
/// idle since that earlier read saw it change (at the latest). Kept off
/// the hot path: only reads touch it.
#[derive(Debug, Default)]
pub struct IdleMark(parking_lot::Mutex<Option<(u64, u64)>>);

impl IdleMark {
    /// Records `activity` at `now_ms` (ms since the Unix epoch); returns
    /// since when it has not changed, or None when it changed since the
    /// last read (or this is the first).
    pub fn observe(&self, activity: u64, now_ms: u64) -> Option<u64> {
        let mut mark = self.0.lock();
        match *mark {
            Some((seen, since)) if seen == activity => Some(since),
            _ => {
                *mark = Some((activity, now_ms));
                None
            }
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A time as RabbitMQ's management API writes `idle_since`:
/// `2026-11-28T16:44:21.557+00:00` (UTC).
pub fn format_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// The message counters of `ChannelStats` that Prometheus sums, in the
/// order of `ChannelStats::counts`.
pub const CHANNEL_COUNTS: usize = 11;

impl ChannelStats {
    /// publish, confirm, return_unroutable, drop_unroutable, deliver,
    /// deliver_no_ack, get, get_no_ack, get_empty, redeliver, ack.
    pub fn counts(&self) -> [u64; CHANNEL_COUNTS] {
        [
            &self.publish,
            &self.confirm,
            &self.return_unroutable,
            &self.drop_unroutable,
            &self.deliver,
            &self.deliver_no_ack,
            &self.get,
            &self.get_no_ack,
            &self.get_empty,
            &self.redeliver,
            &self.ack,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// Every channel's counters since start, for Prometheus' aggregated
/// counters, which must not go down when a channel closes. Channels are
/// entered when they open (not per message); a channel whose counters
/// nobody else holds any more (its connection task let go of them, so they
/// cannot change) is folded into `closed` and forgotten. Both happen under
/// the one lock, so a sum never misses or doubles a channel.
#[derive(Default)]
struct ChannelLedger {
    inner: parking_lot::Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    /// Counters of channels that may still count.
    open: Vec<Arc<ChannelStats>>,
    /// Sums of the channels folded away.
    closed: [u64; CHANNEL_COUNTS],
    /// `open.len()` after the last fold: the next fold is due when the list
    /// has doubled since (amortised, so churn does not make it quadratic).
    after_fold: usize,
    /// Channels opened and closed since start.
    opened_total: u64,
    closed_total: u64,
}

impl LedgerInner {
    fn fold(&mut self) {
        let closed = &mut self.closed;
        self.open.retain(|stats| {
            // Only the ledger holds it and the ledger's lock is held: no
            // one can count on it any more.
            if Arc::strong_count(stats) == 1 {
                for (sum, n) in closed.iter_mut().zip(stats.counts()) {
                    *sum += n;
                }
                false
            } else {
                true
            }
        });
        self.after_fold = self.open.len();
    }
}

impl ChannelLedger {
    fn opened(&self, stats: Arc<ChannelStats>) {
        let mut inner = self.inner.lock();
        inner.opened_total += 1;
        inner.open.push(stats);
        if inner.open.len() >= 2 * inner.after_fold + 64 {
            inner.fold();
        }
    }

    fn closed(&self) {
        self.inner.lock().closed_total += 1;
    }

    fn totals(&self) -> ChannelTotals {
        let mut inner = self.inner.lock();
        inner.fold();
        let mut counts = inner.closed;
        for stats in &inner.open {
            for (sum, n) in counts.iter_mut().zip(stats.counts()) {
                *sum += n;
            }
        }
        ChannelTotals {
            counts,
            opened: inner.opened_total,
            closed: inner.closed_total,
        }
    }
}

/// Sums over every channel since start, open or closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelTotals {
    /// As `ChannelStats::counts`.
    pub counts: [u64; CHANNEL_COUNTS],
    /// Channels opened and closed since start.
    pub opened: u64,
    pub closed: u64,
}

impl ConnectionInfo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: String,
        vhost: String,
        client_properties: FieldTable,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> Self {
        ConnectionInfo {
            id,
            peer,
            local,
            user,
            vhost,
            client_properties,
            channel_max,
            frame_max,
            heartbeat,
            connected_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            channels: AtomicUsize::new(0),
            recv_bytes: AtomicU64::new(0),
            send_bytes: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            close_requested: AtomicBool::new(false),
            close_notify: Notify::new(),
            close_reason: parking_lot::Mutex::new(String::new()),
            channel_numbers: parking_lot::Mutex::new(None),
            channel_stats: parking_lot::Mutex::new(HashMap::new()),
            tls: std::sync::OnceLock::new(),
            ledger: std::sync::OnceLock::new(),
        }
    }

    /// Records an opened channel (called on channel.open, not per message);
    /// returns the counters the channel is to keep current.
    pub fn channel_opened(&self, number: u16) -> Arc<ChannelStats> {
        let mut numbers = self.channel_numbers.lock();
        let set = numbers.get_or_insert_with(BTreeSet::new);
        set.insert(number);
        self.channels.store(set.len(), Ordering::Relaxed);
        let stats = Arc::new(ChannelStats::default());
        self.channel_stats.lock().insert(number, stats.clone());
        if let Some(ledger) = self.ledger.get() {
            ledger.opened(stats.clone());
        }
        stats
    }

    /// Records a closed channel.
    pub fn channel_closed(&self, number: u16) {
        let mut numbers = self.channel_numbers.lock();
        let set = numbers.get_or_insert_with(BTreeSet::new);
        set.remove(&number);
        self.channels.store(set.len(), Ordering::Relaxed);
        let removed = self.channel_stats.lock().remove(&number);
        if let (Some(_), Some(ledger)) = (removed, self.ledger.get()) {
            ledger.closed();
        }
    }

    /// The open channels and their counters, by number.
    pub fn open_channel_stats(&self) -> Vec<(u16, Arc<ChannelStats>)> {
        let mut all: Vec<_> = self
            .channel_stats
            .lock()
            .iter()
            .map(|(n, s)| (*n, s.clone()))
            .collect();
        all.sort_by_key(|(n, _)| *n);
        all
    }

    /// The message counters of an open channel.
    pub fn channel_stats(&self, number: u16) -> Option<Arc<ChannelStats>> {
        self.channel_stats.lock().get(&number).cloned()
    }

    /// The open channel numbers, if the connection layer reports them.
    pub fn reported_channels(&self) -> Option<Vec<u16>> {
        self.channel_numbers
            .lock()
            .as_ref()
            .map(|set| set.iter().copied().collect())
    }

    /// RabbitMQ's connection name: `"127.0.0.1:57214 -> 127.0.0.1:5672"`.
    pub fn name(&self) -> String {
        format!("{} -> {}", self.peer, self.local)
    }

    /// Asks the connection to close with 320 CONNECTION_FORCED and `reason`
    /// (management's DELETE /api/connections/{name}).
    pub fn request_close(&self, reason: &str) {
        *self.close_reason.lock() = reason.to_string();
        self.close_requested.store(true, Ordering::Release);
        self.close_notify.notify_one();
    }

    /// Resolves when a close was requested; returns the reason.
    pub async fn close_requested(&self) -> String {
        loop {
            let notified = self.close_notify.notified();
            if self.close_requested.load(Ordering::Acquire) {
                return self.close_reason.lock().clone();
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_as_rabbitmq() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000+00:00");
        // 2026-11-28 16:44:21.557 UTC
        assert_eq!(
            format_timestamp(1_795_884_261_557),
            "2026-11-28T16:44:21.557+00:00"
        );
        assert_eq!(
            format_timestamp(951_782_400_000),
            "2000-02-29T00:00:00.000+00:00"
        );
    }

    #[test]
    fn idle_after_two_reads_without_activity() {
        let mark = IdleMark::default();
        assert_eq!(mark.observe(5, 1000), None);
        assert_eq!(mark.observe(5, 2000), Some(1000));
        assert_eq!(mark.observe(6, 3000), None);
        assert_eq!(mark.observe(6, 9000), Some(3000));
    }
}

#[derive(Default)]
pub struct Registry {
    connections: DashMap<u64, Arc<ConnectionInfo>>,
    /// Connections registered and removed since start (churn).
    opened: AtomicU64,
    closed: AtomicU64,
    /// Every channel's counters, for totals that survive channel closes.
    channels: Arc<ChannelLedger>,
}

impl Registry {
    pub fn add(&self, info: Arc<ConnectionInfo>) {
        let _ = info.ledger.set(self.channels.clone());
        self.connections.insert(info.id, info);
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn remove(&self, id: u64) {
        if let Some((_, info)) = self.connections.remove(&id) {
            self.closed.fetch_add(1, Ordering::Relaxed);
            // Channels still open go with their connection.
            let open = std::mem::take(&mut *info.channel_stats.lock()).len();
            self.channels.inner.lock().closed_total += open as u64;
        }
    }

    /// (connections opened, connections closed) since start.
    pub fn churn(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.closed.load(Ordering::Relaxed),
        )
    }

    /// Channel message counters summed over every channel since start,
    /// closed ones included, with channel churn.
    pub fn channel_totals(&self) -> ChannelTotals {
        self.channels.totals()
    }

    pub fn connections(&self) -> Vec<Arc<ConnectionInfo>> {
        self.connections.iter().map(|e| e.value().clone()).collect()
    }

    pub fn count(&self) -> usize {
        self.connections.len()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnectionInfo>> {
        self.connections.get(&id).map(|e| e.value().clone())
    }
}

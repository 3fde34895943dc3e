//! Resource alarms, as RabbitMQ's: when the broker's memory use passes the
//! high watermark or free disk space falls below the limit, connections
//! that publish are blocked (`connection.blocked`, and their sockets are no
//! longer read) until the alarm clears. Consumers keep draining. The disk
//! alarm is also raised while the message log cannot write (disk full
//! before the free-space limit saw it, an I/O error).

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Which alarms are raised; `None` when all is well.
pub type AlarmState = Option<&'static str>;

pub struct Alarms {
    /// Memory limit in bytes (0 = derived from the fraction at start).
    memory_limit: AtomicU64,
    disk_free_limit: AtomicU64,
    data_dir: PathBuf,
    state: watch::Sender<AlarmState>,
    last: Mutex<(bool, bool)>,
    /// True while the message log's writes fail.
    store_failing: Mutex<Option<watch::Receiver<bool>>>,
}

impl Alarms {
    pub fn new(memory_limit: u64, disk_free_limit: u64, data_dir: &Path) -> Arc<Alarms> {
        let (state, _) = watch::channel(None);
        Arc::new(Alarms {
            memory_limit: AtomicU64::new(memory_limit),
            disk_free_limit: AtomicU64::new(disk_free_limit),
            data_dir: data_dir.to_path_buf(),
            state,
            last: Mutex::new((false, false)),
            store_failing: Mutex::new(None),
        })
    }

    /// Raises the disk alarm while `failing` is true (the message log's
    /// writes fail), checked at once when it changes.
    pub fn watch_store(&self, failing: watch::Receiver<bool>) {
        *self.store_failing.lock() = Some(failing);
    }

    fn store_failing(&self) -> bool {
        self.store_failing
            .lock()
            .as_ref()
            .is_some_and(|failing| *failing.borrow())
    }

    /// The memory limit for `fraction` of this machine's RAM.
    pub fn memory_limit_for(fraction: f64) -> u64 {
        (total_memory().unwrap_or(1 << 30) as f64 * fraction) as u64
    }

    /// Changes the memory high watermark at run time (bytes).
    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
        self.check();
    }

    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.disk_free_limit.store(bytes, Ordering::Relaxed);
        self.check();
    }

    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed)
    }

    pub fn disk_free_limit(&self) -> u64 {
        self.disk_free_limit.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.state.subscribe()
    }

    pub fn current(&self) -> AlarmState {
        *self.state.borrow()
    }

    /// Samples memory and disk and raises or clears alarms.
    pub fn check(&self) {
        let memory = resident_memory().is_some_and(|rss| rss > self.memory_limit());
        let disk = self.store_failing()
            || free_disk(&self.data_dir).is_some_and(|free| free < self.disk_free_limit());
        let mut last = self.last.lock();
        if *last != (memory, disk) {
            match (memory, disk) {
                (true, _) => tracing::warn!(
                    limit = self.memory_limit(),
                    "memory alarm: publishers blocked"
                ),
                (_, true) => tracing::warn!(
                    limit = self.disk_free_limit(),
                    "disk alarm: publishers blocked"
                ),
                _ => tracing::info!("resource alarms cleared: publishers unblocked"),
            }
            *last = (memory, disk);
        }
        let state = match (memory, disk) {
            (true, _) => Some("low on memory"),
            (_, true) => Some("low on disk"),
            _ => None,
        };
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// Checks every half second while the broker runs, and at once when
    /// the message log's writes start or stop failing.
    pub fn start(self: &Arc<Self>) {
        let mut store_failing = self.store_failing.lock().clone();
        let alarms = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                let store_changed = async {
                    let changed = match store_failing.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => false,
                    };
                    if !changed {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = store_changed => {}
                }
                match alarms.upgrade() {
                    Some(a) => a.check(),
                    None => return,
                }
            }
        });
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// This process's resident memory in bytes.
pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes available to unprivileged users on the file system of `path`.
pub fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

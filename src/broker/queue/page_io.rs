//! The page I/O thread of one broker: page-file writes, truncations,
//! deletions and read-aheads run on it, in the order the queues asked for
//! them, so that no queue lock (and no async worker) waits for the disk.
//! A queue hands over a full write buffer and keeps it readable in memory
//! until the thread has written it (`WriteProgress`); it asks for the next
//! batch of paged messages to be read while its consumers still drain the
//! current one (`ReadAhead`). Ops on one file are done in order, so a
//! read-ahead queued after a write sees it.

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

enum Job {
    Write {
        file: Arc<File>,
        offset: u64,
        data: Bytes,
        job: u64,
        progress: Arc<WriteProgress>,
    },
    Truncate(Arc<File>),
    Remove(PathBuf),
    Read {
        file: Arc<File>,
        offset: u64,
        len: usize,
        slot: Arc<ReadAhead>,
    },
    /// Answered once every job before it is done.
    Barrier(mpsc::SyncSender<()>),
}

/// The sending side of a broker's page I/O thread; the thread ends when
/// this is dropped (with the broker's `PageBudget`).
pub struct PageIo {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for PageIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageIo")
    }
}

impl PageIo {
    pub fn start() -> std::io::Result<PageIo> {
        let (jobs, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("page-io".into())
            .spawn(move || run(inbox))?;
        Ok(PageIo { jobs })
    }

    fn send(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Writes `data` at `offset`; `progress` hears when job number `job`
    /// is done. False if the thread is gone (the caller writes itself).
    pub fn write(
        &self,
        file: Arc<File>,
        offset: u64,
        data: Bytes,
        job: u64,
        progress: Arc<WriteProgress>,
    ) -> bool {
        self.send(Job::Write {
            file,
            offset,
            data,
            job,
            progress,
        })
    }

    pub fn truncate(&self, file: Arc<File>) {
        if let Some(Job::Truncate(file)) = self.send_or_return(Job::Truncate(file)) {
            truncate(&file);
        }
    }

    pub fn remove(&self, path: PathBuf) {
        if let Some(Job::Remove(path)) = self.send_or_return(Job::Remove(path)) {
            remove(&path);
        }
    }

    /// Reads `len` bytes at `offset` into a new read-ahead slot.
    pub fn read(&self, file: Arc<File>, offset: u64, len: usize) -> Option<Arc<ReadAhead>> {
        let slot = Arc::new(ReadAhead::default());
        self.send(Job::Read {
            file,
            offset,
            len,
            slot: slot.clone(),
        })
        .then_some(slot)
    }

    /// Waits until every job asked for so far is done (tests, and
    /// whoever must see the files as the queues left them).
    pub fn settle(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.send(Job::Barrier(done)) {
            let _ = wait.recv();
        }
    }

    fn send_or_return(&self, job: Job) -> Option<Job> {
        self.jobs.send(job).err().map(|e| e.0)
    }
}

fn run(inbox: mpsc::Receiver<Job>) {
    while let Ok(job) = inbox.recv() {
        match job {
            Job::Write {
                file,
                offset,
                data,
                job,
                progress,
            } => {
                if let Err(e) = file.write_all_at(&data, offset) {
                    // The queue keeps serving these bytes from memory.
                    tracing::error!(error = %e, "cannot write queue page file (kept in memory)");
                    progress.failed.lock().push(job);
                }
                progress.done.store(job, Ordering::Release);
            }
            Job::Truncate(file) => truncate(&file),
            Job::Barrier(done) => {
                let _ = done.send(());
            }
            Job::Remove(path) => remove(&path),
            Job::Read {
                file,
                offset,
                len,
                slot,
            } => {
                let mut buf = vec![0u8; len];
                let read = file
                    .read_exact_at(&mut buf, offset)
                    .map(|()| Bytes::from(buf));
                *slot.result.lock() = Some(read);
                slot.ready.notify_all();
            }
        }
    }
}

fn truncate(file: &File) {
    if let Err(e) = file.set_len(0) {
        tracing::warn!(error = %e, "cannot truncate queue page file");
    }
}

fn remove(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove queue page file");
    }
}

/// How far the thread got with one page file's writes: every job number
/// up to `done` is finished; `failed` lists those that were not written
/// (their buffers stay in memory).
#[derive(Default)]
pub struct WriteProgress {
    done: AtomicU64,
    failed: Mutex<Vec<u64>>,
}

impl WriteProgress {
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    pub fn failed(&self, job: u64) -> bool {
        self.failed.lock().contains(&job)
    }
}

/// The bytes of a read-ahead, once read.
#[derive(Default)]
pub struct ReadAhead {
    result: Mutex<Option<std::io::Result<Bytes>>>,
    ready: Condvar,
}

impl ReadAhead {
    /// The bytes, waiting for them if the read is still running (the
    /// consumers are faster than the disk: the wait is what reading in
    /// place would have cost). `None` after a minute (a stuck disk).
    pub fn wait(&self) -> Option<std::io::Result<Bytes>> {
        let mut result = self.result.lock();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while result.is_none() {
            if self.ready.wait_until(&mut result, deadline).timed_out() {
                break;
            }
        }
        result.take()
    }
}

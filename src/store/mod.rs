//! Persistence: the definitions catalog (sled) and the message log (own
//! segment files with group commit). See docs/storage.md.

pub mod catalog;
mod catalog_wal;
mod compaction;
mod inbox;
pub mod message_log;
mod record;
pub mod stream_log;
pub mod write_failures;

use anyhow::{bail, Context};
use std::fs::File;
use std::path::Path;

pub use catalog::Catalog;
pub use message_log::{LogOptions, MessageLog, Recovered};

/// On-disk format version of the data directory; bumped on any change that
/// an older broker could misread.
pub const FORMAT_VERSION: u32 = 1;

pub struct Store {
    pub dir: std::path::PathBuf,
    pub catalog: Catalog,
    pub log: std::sync::Arc<MessageLog>,
    /// Held for the life of the broker: a second broker on the same data
    /// directory cannot take it.
    _lock: File,
}

impl Store {
    /// Where stream queue `name` of `vhost` keeps its segments.
    pub fn stream_dir(&self, vhost: &str, name: &str) -> std::path::PathBuf {
        self.dir.join("streams").join(stream_folder(vhost, name))
    }

    /// Opens (or creates) the data directory: lock, format check, catalog,
    /// and the message log with its recovered contents.
    pub fn open_with(dir: &Path, options: LogOptions) -> anyhow::Result<(Store, Recovered)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            bail!(
                "data dir {} is in use by another broker (lock {} is held)",
                dir.display(),
                lock_path.display()
            );
        }
        let version_path = dir.join("FORMAT");
        match std::fs::read_to_string(&version_path) {
            Ok(text) => match text.trim().parse::<u32>() {
                Ok(FORMAT_VERSION) => {}
                Ok(other) => bail!(
                    "data dir {} has format version {other}; this broker reads version {FORMAT_VERSION}",
                    dir.display()
                ),
                Err(_) => bail!("data dir {} has an unreadable FORMAT file: {text:?}", dir.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(&version_path, format!("{FORMAT_VERSION}\n"))?;
            }
            Err(e) => return Err(e).context("cannot read FORMAT"),
        }
        let catalog = Catalog::open(&dir.join("catalog"))?;
        stream_log::remove_deleted_streams(&dir.join("streams"));
        let (log, recovered) = MessageLog::open_with(&dir.join("messages"), options)?;
        Ok((
            Store {
                dir: dir.to_path_buf(),
                catalog,
                log: std::sync::Arc::new(log),
                _lock: lock,
            },
            recovered,
        ))
    }
}

/// A stream's folder name: the vhost and queue names hex-encoded, so any
/// names make a safe, distinct folder. Past the filesystem's 255 bytes
/// (names of more than about 126 bytes together), the SHA-256 of the same
/// bytes instead, so long names still get a folder of their own.
fn stream_folder(vhost: &str, name: &str) -> String {
    let bytes: Vec<u8> = vhost.bytes().chain([0]).chain(name.bytes()).collect();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if 2 * bytes.len() <= 255 {
        return hex(&bytes);
    }
    use sha2::Digest;
    format!("sha256-{}", hex(&sha2::Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::stream_folder;

    #[test]
    fn stream_folders_fit_the_filesystem_and_stay_distinct() {
        // Short names keep the folder they always had.
        assert_eq!(stream_folder("/", "s"), "2f0073");
        let long_a = stream_folder("/", &"a".repeat(255));
        let long_b = stream_folder("/", &format!("{}b", "a".repeat(254)));
        assert!(long_a.len() <= 255 && long_b.len() <= 255);
        assert_ne!(long_a, long_b);
        assert_eq!(long_a, stream_folder("/", &"a".repeat(255)));
    }
}

//! The catalog's write-ahead log: what makes a catalog change durable
//! without a sled flush per change.
//!
//! Every change is applied to sled at once and its record (tree, key, new
//! value or removal) appended to this log by the catalog's thread, one
//! write and one `fsync` per group of changes. sled itself is flushed only
//! at a checkpoint (the log grew past a size, or a few seconds passed):
//! the thread starts a new file, flushes sled, which then holds everything
//! the old file did, and deletes the old file. At open, every file left is
//! replayed into sled in order (a torn record at the end of the last one
//! is ignored: its change was never acknowledged), sled is flushed and the
//! files deleted. Replay is idempotent (puts and removals by key), so a
//! record both in sled and in a file is harmless.
//!
//! A file is a sequence of records: payload length (u32 LE), crc32c of the
//! payload (u32 LE), payload; then zeros. A file is grown 1 MiB of zeros at
//! a time (synced with `fsync` then), so a group commit overwrites blocks
//! already allocated and its `fdatasync` writes the data alone: no inode
//! write per commit. Payload: tree name length (u16 LE), tree
//! name, key length (u32 LE), key, 1 and value length (u32 LE) and value
//! for a put, or 0 for a removal.

use anyhow::Context;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A change as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub tree: String,
    pub key: Vec<u8>,
    /// `None`: removed.
    pub value: Option<Vec<u8>>,
}

/// Appends the record of a change to `buf`.
pub fn encode(buf: &mut Vec<u8>, tree: &str, key: &[u8], value: Option<&[u8]>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&(tree.len() as u16).to_le_bytes());
    buf.extend_from_slice(tree.as_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    match value {
        Some(value) => {
            buf.push(1);
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(value);
        }
        None => buf.push(0),
    }
    let payload = &buf[start + 8..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c(payload).to_le_bytes();
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + 8].copy_from_slice(&crc);
}

/// The records of a file's bytes, and where an unreadable record (torn or
/// corrupt) stopped the reading, if one did. Zeros after the last record
/// are the file's unused part.
pub fn decode(bytes: &[u8]) -> (Vec<Record>, Option<usize>) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match decode_one(&bytes[at..]) {
            Some((record, used)) => {
                records.push(record);
                at += used;
            }
            None if bytes[at..].iter().all(|b| *b == 0) => break,
            None => return (records, Some(at)),
        }
    }
    (records, None)
}

/// Where the records of a file's bytes end (tests: to tear a record
/// there).
#[cfg(test)]
pub fn end_of_records(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some((_, used)) = decode_one(&bytes[at..]) {
        at += used;
    }
    at
}

fn decode_one(bytes: &[u8]) -> Option<(Record, usize)> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let len = u32_at(bytes, 0)? as usize;
    let crc = u32_at(bytes, 4)?;
    let payload = bytes.get(8..8usize.checked_add(len)?)?;
    if len == 0 || crc32c::crc32c(payload) != crc {
        return None;
    }
    let tree_len = u16::from_le_bytes(payload.get(0..2)?.try_into().ok()?) as usize;
    let tree = std::str::from_utf8(payload.get(2..2 + tree_len)?).ok()?;
    let mut at = 2 + tree_len;
    let key_len = u32_at(payload, at)? as usize;
    at += 4;
    let key = payload.get(at..at.checked_add(key_len)?)?;
    at += key_len;
    let value = match *payload.get(at)? {
        1 => {
            let value_len = u32_at(payload, at + 1)? as usize;
            at += 5;
            let value = payload.get(at..at.checked_add(value_len)?)?;
            at += value_len;
            Some(value.to_vec())
        }
        0 => {
            at += 1;
            None
        }
        _ => return None,
    };
    if at != payload.len() {
        return None;
    }
    Some((
        Record {
            tree: tree.to_string(),
            key: key.to_vec(),
            value,
        },
        8 + len,
    ))
}

/// The log's folder for the catalog (sled) at `catalog`: beside it,
/// `<catalog>-wal`.
pub fn dir_for(catalog: &Path) -> PathBuf {
    match catalog.file_name() {
        Some(name) => {
            let mut name = name.to_os_string();
            name.push("-wal");
            catalog.with_file_name(name)
        }
        None => catalog.join("catalog-wal"),
    }
}

fn file_name(number: u64) -> String {
    format!("{number:016}.wal")
}

/// The log files in `dir`, oldest first.
fn files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        files.push((number, entry.path()));
    }
    files.sort();
    Ok(files)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How much a file grows at a time.
const GROW_BY: u64 = 1 << 20;

/// The file being appended to.
pub struct Wal {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Bytes of records.
    len: u64,
    /// Bytes written (records, then zeros) and synced.
    allocated: u64,
}

impl Wal {
    /// Replays the files left in `dir` (created if missing) through
    /// `apply`, oldest first, then `flush`es (sled), deletes them and
    /// starts a new file. An I/O error, or a failed `apply` / `flush`, fails
    /// the open: the changes the files hold were acknowledged.
    pub fn recover(
        dir: &Path,
        mut apply: impl FnMut(Record) -> anyhow::Result<()>,
        flush: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Wal> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the catalog log {}", dir.display()))?;
        let found =
            files(dir).with_context(|| format!("cannot list the catalog log {}", dir.display()))?;
        let last = found.last().map(|(number, _)| *number);
        for (number, path) in &found {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .with_context(|| format!("cannot read {}", path.display()))?;
            let (records, bad) = decode(&bytes);
            let count = records.len();
            for record in records {
                apply(record)?;
            }
            if let Some(at) = bad {
                let ignored = bytes.len() - at;
                if Some(*number) == last {
                    tracing::warn!(
                        "catalog log {}: ignoring a torn tail of {ignored} bytes at {at}",
                        path.display()
                    );
                } else {
                    tracing::error!(
                        "catalog log {}: unreadable record at {at}, {ignored} bytes skipped",
                        path.display()
                    );
                }
            }
            tracing::debug!("catalog log {}: {count} changes replayed", path.display());
        }
        if !found.is_empty() {
            flush()?;
            for (_, path) in &found {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot delete {}", path.display()))?;
            }
        }
        let number = last.map_or(1, |n| n + 1);
        let wal = Wal::create(dir, number)?;
        Ok(wal)
    }

    fn create(dir: &Path, number: u64) -> anyhow::Result<Wal> {
        let path = dir.join(file_name(number));
        let file = File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            number,
            file,
            len: 0,
            allocated: 0,
        })
    }

    /// Bytes in the current file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Writes `records` (whole encoded records) and syncs them: with
    /// `fdatasync` into the file's zeros, with `fsync` when the file grows.
    /// After an error the next append writes at the same place again, so
    /// no record follows a torn one.
    pub fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        let end = self.len + records.len() as u64;
        let grown = (end > self.allocated).then(|| end.div_ceil(GROW_BY) * GROW_BY);
        let result = (|| {
            if let Some(grown) = grown {
                let zeros = vec![0; (grown - self.allocated) as usize];
                self.file.write_all_at(&zeros, self.allocated)?;
            }
            self.file.write_all_at(records, self.len)?;
            match grown {
                Some(_) => self.file.sync_all(),
                None => self.file.sync_data(),
            }
        })();
        if result.is_ok() {
            self.len = end;
            self.allocated = grown.unwrap_or(self.allocated);
        }
        result
    }

    /// Starts a new file; the previous ones are deleted once sled holds
    /// their changes (`remove_older`).
    pub fn rotate(&mut self) -> anyhow::Result<()> {
        *self = Wal::create(&self.dir, self.number + 1)?;
        Ok(())
    }

    /// Deletes the files before the current one (also any a failed
    /// checkpoint left) and syncs the folder.
    pub fn remove_older(&self) -> std::io::Result<()> {
        for (number, path) in files(&self.dir)? {
            if number < self.number {
                std::fs::remove_file(&path)?;
            }
        }
        sync_dir(&self.dir)
    }

    /// At close, once sled is flushed: deletes the current file too.
    pub fn remove_all(self) -> std::io::Result<()> {
        for (_, path) in files(&self.dir)? {
            std::fs::remove_file(&path)?;
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Trees = BTreeMap<(String, Vec<u8>), Vec<u8>>;

    fn replay(dir: &Path) -> (Trees, Wal) {
        let mut trees = Trees::new();
        let wal = Wal::recover(
            dir,
            |r| {
                match r.value {
                    Some(v) => trees.insert((r.tree, r.key), v),
                    None => trees.remove(&(r.tree, r.key)),
                };
                Ok(())
            },
            || Ok(()),
        )
        .unwrap();
        (trees, wal)
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, "queues", b"/\0q", Some(b"{}"));
        encode(&mut buf, "policies", b"k", None);
        encode(&mut buf, "t", b"", Some(b""));
        let (records, bad) = decode(&buf);
        assert_eq!(bad, None);
        assert_eq!(
            records,
            vec![
                Record {
                    tree: "queues".into(),
                    key: b"/\0q".to_vec(),
                    value: Some(b"{}".to_vec())
                },
                Record {
                    tree: "policies".into(),
                    key: b"k".to_vec(),
                    value: None
                },
                Record {
                    tree: "t".into(),
                    key: Vec::new(),
                    value: Some(Vec::new())
                },
            ]
        );
    }

    #[test]
    fn replay_after_a_crash_keeps_every_synced_change_and_ignores_a_torn_tail() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("catalog-wal");
        let (trees, mut wal) = replay(&dir);
        assert!(trees.is_empty());
        let mut buf = Vec::new();
        encode(&mut buf, "queues", b"a", Some(b"1"));
        encode(&mut buf, "queues", b"b", Some(b"2"));
        encode(&mut buf, "queues", b"a", None);
        wal.append(&buf).unwrap();
        // A checkpointed file followed by a newer one: both replayed in order.
        wal.rotate().unwrap();
        buf.clear();
        encode(&mut buf, "queues", b"b", Some(b"3"));
        encode(&mut buf, "policies", b"p", Some(b"x"));
        wal.append(&buf).unwrap();
        // A torn last record: only part of it reached the file.
        buf.clear();
        encode(&mut buf, "queues", b"c", Some(b"torn"));
        wal.append(&buf[..buf.len() - 2]).unwrap();
        drop(wal); // crash: no checkpoint

        let (trees, wal) = replay(&dir);
        let expected: Trees = [
            (("queues".to_string(), b"b".to_vec()), b"3".to_vec()),
            (("policies".to_string(), b"p".to_vec()), b"x".to_vec()),
        ]
        .into_iter()
        .collect();
        assert_eq!(trees, expected);
        // Replayed files are gone; a fresh one is used.
        assert_eq!(files(&dir).unwrap().len(), 1);
        assert_eq!(wal.len(), 0);
        drop(wal);
        let (trees, _wal) = replay(&dir);
        assert!(trees.is_empty(), "already replayed into sled");
    }

    #[test]
    fn a_checkpoint_deletes_the_older_files_only() {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("catalog-wal");
        let (_, mut wal) = replay(&dir);
        let mut buf = Vec::new();
        encode(&mut buf, "queues", b"a", Some(b"1"));
        wal.append(&buf).unwrap();
        wal.rotate().unwrap();
        wal.rotate().unwrap();
        buf.clear();
        encode(&mut buf, "queues", b"b", Some(b"2"));
        wal.append(&buf).unwrap();
        assert_eq!(files(&dir).unwrap().len(), 3);
        wal.remove_older().unwrap();
        assert_eq!(files(&dir).unwrap().len(), 1);
        drop(wal);
        let (trees, _) = replay(&dir);
        assert_eq!(trees.len(), 1, "only what the newest file holds");
    }

    #[test]
    fn zeros_after_the_records_are_no_torn_tail() {
        let mut buf = Vec::new();
        encode(&mut buf, "queues", b"a", Some(b"1"));
        buf.extend_from_slice(&[0; 100]);
        let (records, bad) = decode(&buf);
        assert_eq!((records.len(), bad), (1, None));
        // A record torn over the zeros is.
        let mut torn = Vec::new();
        encode(&mut torn, "queues", b"b", Some(b"2"));
        let at = buf.len() - 100;
        buf[at..at + 5].copy_from_slice(&torn[..5]);
        let (records, bad) = decode(&buf);
        assert_eq!((records.len(), bad), (1, Some(at)));
    }

    #[test]
    fn a_corrupt_record_ends_the_reading() {
        let mut buf = Vec::new();
        encode(&mut buf, "queues", b"a", Some(b"1"));
        let first = buf.len();
        encode(&mut buf, "queues", b"b", Some(b"2"));
        buf[first + 10] ^= 0xff;
        let (records, bad) = decode(&buf);
        assert_eq!(records.len(), 1);
        assert_eq!(bad, Some(first));
    }
}

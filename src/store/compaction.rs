//! The message log's compaction thread. The writer asks it to compact a
//! segment whose live bytes fell below half of it; this thread reads that
//! segment and hands its records to the writer in bounded chunks. The
//! writer (see `WriterState::apply_chunk` in `message_log`) keeps what is
//! still needed: it rewrites live messages into the current segment with
//! their remaining queues, carries removal records whose message is still
//! on disk elsewhere, and deletes the old segment only after the sync that
//! made all of that durable. Reading here keeps the writer's hot path free
//! of segment-sized reads; one chunk at a time keeps each group commit
//! small, so confirms never wait behind a whole segment's copy.

use super::message_log::{scan_segment, segment_path};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;

/// Most record bytes read from the old segment per chunk (and so at most
/// that much copied per group commit).
const CHUNK_BYTES: usize = 2 * 1024 * 1024;

/// How a chunk ends the compaction of its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkEnd {
    /// More chunks follow.
    More,
    /// The segment was read whole: once this chunk's copies are synced,
    /// the segment may go.
    Last,
    /// The segment could not be read whole: it stays.
    Abort,
}

/// Reads each requested segment and submits its records chunk by chunk.
/// `submit` returns whether to go on with the segment (`None`: the writer
/// is gone, so this thread ends).
pub fn run(
    dir: PathBuf,
    requests: Receiver<u32>,
    mut submit: impl FnMut(u32, Vec<Bytes>, ChunkEnd) -> Option<bool>,
) {
    while let Ok(segment) = requests.recv() {
        let path = segment_path(&dir, segment);
        // Checked whole first, so that a segment that cannot be read whole
        // is left alone before anything of it was copied.
        let check = scan_segment(&path, |_, _| true);
        let problem = match &check {
            Ok(s) if s.end == s.file_len && s.skipped.is_empty() => None,
            Ok(s) => Some(format!(
                "readable to {} of {} bytes, {} corrupt records",
                s.end,
                s.file_len,
                s.skipped.len()
            )),
            Err(e) => Some(format!("cannot read it: {e}")),
        };
        if let Some(problem) = problem {
            tracing::error!(segment, "segment not compacted: {problem}");
            if submit(segment, Vec::new(), ChunkEnd::Abort).is_none() {
                return;
            }
            continue;
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut go_on = true;
        let mut writer_gone = false;
        let scan = scan_segment(&path, |_, payload| {
            bytes += payload.len();
            records.push(payload);
            if bytes >= CHUNK_BYTES {
                bytes = 0;
                match submit(segment, std::mem::take(&mut records), ChunkEnd::More) {
                    Some(true) => {}
                    Some(false) => go_on = false,
                    None => {
                        writer_gone = true;
                        go_on = false;
                    }
                }
            }
            go_on
        });
        if writer_gone {
            return;
        }
        if !go_on {
            // The writer gave up on this segment (it said why).
            continue;
        }
        let end = match &scan {
            Ok(s) if s.end == s.file_len && s.skipped.is_empty() => ChunkEnd::Last,
            Ok(s) => {
                tracing::error!(
                    segment,
                    readable_to = s.end,
                    len = s.file_len,
                    corrupt_records = s.skipped.len(),
                    "segment not compacted: part of it is unreadable"
                );
                ChunkEnd::Abort
            }
            Err(e) => {
                tracing::error!(segment, "segment not compacted: cannot read it: {e}");
                ChunkEnd::Abort
            }
        };
        if submit(segment, records, end).is_none() {
            return;
        }
    }
}

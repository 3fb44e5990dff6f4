//! Where sealed chunks live: segment files under `data_dir/history` (64 MiB each, deleted
//! whole once every sample in them is past the retention), or memory when there is no
//! directory or a write fails. Each chunk record starts with the [`Sealed`] reference of the
//! series' chunk before it, so a series keeps one reference in memory and readers walk back
//! with positioned reads, without the history's lock ([`ChunkReader`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::gorilla::{Head, Iter};
use super::{CHUNK_SAMPLES, fits_span};

/// A segment file is closed for writing at this size.
const SEGMENT_BYTES: u64 = 64 << 20;

/// A full chunk: its time range, and where it lies. 24 bytes, in memory for the newest sealed
/// chunk of each series, and on disk in front of every chunk's stream for the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub(super) first_t: i64,
    /// `last_t - first_t`; a chunk never spans more (see [`fits_span`]).
    span: u32,
    /// A segment file, or [`MEMORY`].
    segment: u32,
    /// Byte offset in the segment, or the id of a chunk kept in memory.
    offset: u32,
    /// Bytes of the stream.
    pub(super) bytes: u16,
    pub(super) n: u16,
}

/// The `segment` of a chunk kept in memory (no history directory, or a failed write).
const MEMORY: u32 = u32::MAX;
/// The `segment` written for "no chunk before this one".
const NONE: u32 = u32::MAX - 1;
/// Bytes of a chunk record before its stream: the previous chunk's [`Sealed`].
const LINK_BYTES: usize = 24;

impl Sealed {
    /// Timestamp of the oldest sample.
    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    /// Timestamp of the newest sample.
    pub fn last_t(&self) -> i64 {
        self.first_t + i64::from(self.span)
    }

    /// Number of samples.
    pub fn len(&self) -> u16 {
        self.n
    }

    fn encode(prev: Option<&Sealed>, out: &mut Vec<u8>) {
        let none = Sealed { first_t: 0, span: 0, segment: NONE, offset: 0, bytes: 0, n: 0 };
        let c = prev.unwrap_or(&none);
        out.extend_from_slice(&c.first_t.to_le_bytes());
        out.extend_from_slice(&c.span.to_le_bytes());
        out.extend_from_slice(&c.segment.to_le_bytes());
        out.extend_from_slice(&c.offset.to_le_bytes());
        out.extend_from_slice(&c.bytes.to_le_bytes());
        out.extend_from_slice(&c.n.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Sealed> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        let c = Sealed {
            first_t: i64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            span: u32_at(8),
            segment: u32_at(12),
            offset: u32_at(16),
            bytes: u16_at(20),
            n: u16_at(22),
        };
        (c.segment != NONE).then_some(c)
    }
}

/// A sealed chunk read back: the chunk before it, and its stream.
pub(super) struct Record {
    pub(super) prev: Option<Sealed>,
    pub(super) stream: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    len: u64,
    /// The newest sample of any chunk written to it: once that is past the retention, so is
    /// everything in the file.
    last_t: i64,
}

/// Where sealed chunks live: segment files under a directory, or memory when there is none
/// (or when a write fails, so nothing is lost). Written under the history's lock; read through
/// a [`ChunkReader`] without it.
#[derive(Debug, Default)]
pub struct ChunkFiles {
    dir: Option<PathBuf>,
    segments: BTreeMap<u32, Segment>,
    next: u32,
    next_memory: u32,
    memory_bytes: usize,
    bytes: u64,
    write_errors: u64,
    shared: Arc<Shared>,
}

/// A chunk kept in memory: its newest sample's time, and its record as it would be on disk.
type MemoryChunk = (i64, Arc<[u8]>);

/// What readers of sealed chunks need: the open segment files and the chunks kept in memory.
#[derive(Debug, Default)]
struct Shared {
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    /// Chunks kept in memory, by id.
    memory: RwLock<BTreeMap<u32, MemoryChunk>>,
    read_errors: AtomicU64,
}

/// Reads sealed chunks without holding the history's lock, so that queries reading from disk
/// do not hold up the reports being appended. A chunk whose file has expired meanwhile reads
/// as gone.
#[derive(Debug, Clone, Default)]
pub struct ChunkReader(Arc<Shared>);

impl ChunkReader {
    /// Reads a sealed chunk back; `None` if it is gone (its file expired) or unreadable.
    pub(super) fn read(&self, c: &Sealed) -> Option<Record> {
        let record_len = LINK_BYTES + usize::from(c.bytes);
        let mut buf = vec![0u8; record_len];
        if c.segment == MEMORY {
            let b = self.0.memory.read().expect("chunk memory lock").get(&c.offset)?.1.clone();
            buf.copy_from_slice(&b);
        } else {
            // A segment deleted past the retention takes its chunks with it: not an error.
            let file = self.0.files.read().expect("chunk files lock").get(&c.segment)?.clone();
            if let Err(e) = file.read_exact_at(&mut buf, u64::from(c.offset)) {
                if self.0.read_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(segment = c.segment, error = %e, "cannot read a history chunk back from disk");
                }
                return None;
            }
        }
        let prev = Sealed::decode(&buf[..LINK_BYTES]);
        buf.drain(..LINK_BYTES);
        Some(Record { prev, stream: buf })
    }

    /// The samples of a sealed chunk, oldest first, and the chunk before it (none if the
    /// chunk cannot be read).
    pub(super) fn points(&self, c: &Sealed, out: &mut Vec<(i64, f64)>, keep: impl Fn(i64) -> bool) -> Option<Sealed> {
        let r = self.read(c)?;
        out.extend(Iter::new(c.first_t, c.n, &r.stream).filter(|p| keep(p.0)));
        r.prev
    }
}

impl ChunkFiles {
    /// Sealed chunks stay in memory.
    #[cfg(test)]
    pub fn memory() -> ChunkFiles {
        ChunkFiles::default()
    }

    /// Sealed chunks go to segment files in `dir`, which is created, or emptied of old ones.
    pub fn open(dir: PathBuf) -> std::io::Result<ChunkFiles> {
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("chunks-") {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(ChunkFiles { dir: Some(dir), ..Default::default() })
    }

    /// Seals a full head, the series' next chunk after `prev`: writes it to the newest
    /// segment, or keeps it in memory.
    pub fn seal(&mut self, h: &Head, prev: Option<Sealed>) -> Sealed {
        let stream = h.stream();
        debug_assert!(h.len() <= CHUNK_SAMPLES && fits_span(h.first_t(), h.last_t()));
        let mut record = Vec::with_capacity(LINK_BYTES + stream.len());
        Sealed::encode(prev.as_ref(), &mut record);
        record.extend_from_slice(stream);
        let (segment, offset) = match self.write(&record, h.last_t()) {
            Some(at) => at,
            None => {
                let id = self.next_memory;
                self.next_memory = self.next_memory.wrapping_add(1);
                self.memory_bytes += record.len();
                self.shared.memory.write().expect("chunk memory lock").insert(id, (h.last_t(), record.into()));
                (MEMORY, id)
            }
        };
        Sealed {
            first_t: h.first_t(),
            span: (h.last_t() - h.first_t()) as u32,
            segment,
            offset,
            bytes: stream.len() as u16,
            n: h.len(),
        }
    }

    /// Forgets a chunk that was replaced (segment files keep the bytes until they expire).
    pub fn release(&mut self, c: &Sealed) {
        if c.segment == MEMORY
            && let Some((_, b)) = self.shared.memory.write().expect("chunk memory lock").remove(&c.offset)
        {
            self.memory_bytes -= b.len();
        }
    }

    /// Appends a stream to the newest segment: (segment, offset).
    fn write(&mut self, stream: &[u8], last_t: i64) -> Option<(u32, u32)> {
        let dir = self.dir.as_ref()?;
        let current = self.segments.last_key_value().filter(|(_, s)| s.len < SEGMENT_BYTES).map(|(&k, _)| k);
        let id = match current {
            Some(id) => id,
            None => {
                let id = self.next;
                let path = dir.join(format!("chunks-{id:06}"));
                let file =
                    match std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path) {
                        Ok(f) => Arc::new(f),
                        Err(e) => return self.failed(&e),
                    };
                self.next += 1;
                self.shared.files.write().expect("chunk files lock").insert(id, file.clone());
                self.segments.insert(id, Segment { file, len: 0, last_t });
                id
            }
        };
        let seg = self.segments.get_mut(&id).expect("just found or made");
        if let Err(e) = (&*seg.file).write_all(stream) {
            // A short write leaves bytes nobody points at; the next chunk starts after them.
            seg.len = seg.file.metadata().map(|m| m.len()).unwrap_or(SEGMENT_BYTES);
            return self.failed(&e);
        }
        let offset = seg.len as u32;
        seg.len += stream.len() as u64;
        seg.last_t = seg.last_t.max(last_t);
        self.bytes += stream.len() as u64;
        Some((id, offset))
    }

    fn failed(&mut self, e: &std::io::Error) -> Option<(u32, u32)> {
        if self.write_errors == 0 {
            tracing::error!(error = %e, "cannot write history chunks to disk; keeping them in memory");
        }
        self.write_errors += 1;
        None
    }

    /// Reads sealed chunks without the history's lock.
    pub fn reader(&self) -> ChunkReader {
        ChunkReader(self.shared.clone())
    }

    pub(super) fn read(&self, c: &Sealed) -> Option<Record> {
        self.reader().read(c)
    }

    /// Deletes segment files, and forgets chunks kept in memory, whose every sample is older
    /// than `cutoff`.
    pub fn trim(&mut self, cutoff: i64) {
        let newest = self.segments.last_key_value().map(|(&k, _)| k);
        let expired: Vec<u32> =
            self.segments.iter().filter(|&(&k, s)| Some(k) != newest && s.last_t < cutoff).map(|(&k, _)| k).collect();
        for k in expired {
            if let (Some(s), Some(dir)) = (self.segments.remove(&k), &self.dir) {
                self.shared.files.write().expect("chunk files lock").remove(&k);
                self.bytes -= s.len.min(self.bytes);
                let _ = std::fs::remove_file(dir.join(format!("chunks-{k:06}")));
            }
        }
        let mut freed = 0;
        self.shared.memory.write().expect("chunk memory lock").retain(|_, (last_t, b)| {
            let keep = *last_t >= cutoff;
            if !keep {
                freed += b.len();
            }
            keep
        });
        self.memory_bytes -= freed;
    }

    /// Bytes of chunks kept in memory.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Bytes in segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.bytes
    }

    /// Chunks that could not be written (and stayed in memory) or read back.
    pub fn errors(&self) -> u64 {
        self.write_errors + self.shared.read_errors.load(Ordering::Relaxed)
    }
}

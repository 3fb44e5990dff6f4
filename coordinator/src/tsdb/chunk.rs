//! Compressed runs of one series' samples: the timestamps as delta-of-deltas and the values as
//! the XOR of each with the one before, after Gorilla (Pelkonen et al., VLDB 2015), the
//! encoding Prometheus' chunks use. An agent reporting every few seconds produces timestamps
//! whose delta-of-delta is a few milliseconds (9 bits) and values that are mostly unchanged
//! (1 bit) or differ in a few mantissa bits, so a sample costs one or two bytes instead of 16.
//!
//! A [`Head`] takes samples in time order; when it holds [`CHUNK_SAMPLES`] it is sealed, and
//! [`ChunkFiles`] moves the sealed bit stream out of memory into a segment file (as
//! Prometheus' head does with its full chunks). Each chunk written carries the reference of
//! the series' chunk before it, so a series keeps only its newest sealed chunk's reference in
//! memory and queries walk back from it with positioned reads; the page cache keeps the recent
//! chunks warm without counting against the coordinator's resident memory. The files are a
//! cache of the report log: they are emptied at start-up, when the history is rebuilt from it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Samples per chunk before it is sealed (5 minutes at a 5 s report interval). Every series
/// has an open chunk in memory, so this sets most of the history's memory; a shorter chunk
/// costs a little more disk (a reference and a first sample each) and reads.
pub const CHUNK_SAMPLES: u16 = 60;

/// A segment file is closed for writing at this size.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Appends bits to a byte vector, most significant bit first.
#[derive(Debug, Default, Clone)]
struct BitWriter {
    buf: Vec<u8>,
    /// Bits used in the last byte (0 when it is full or there is none).
    used: u8,
}

impl BitWriter {
    /// Starts a new byte. The buffer grows 32 bytes at a time, not by doubling: an open chunk
    /// lives for 120 samples, and every series has one.
    fn push_byte(&mut self) {
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve_exact(32);
        }
        self.buf.push(0);
    }

    fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.push_byte();
        }
        if bit {
            *self.buf.last_mut().expect("a byte was pushed") |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// Writes the low `n` bits of `v` (n ≤ 64).
    fn write_bits(&mut self, v: u64, n: u8) {
        let mut n = n;
        while n > 0 {
            if self.used == 0 {
                self.push_byte();
            }
            let free = 8 - self.used;
            let take = free.min(n);
            let bits = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            *self.buf.last_mut().expect("a byte was pushed") |= bits << (free - take);
            self.used = (self.used + take) % 8;
            n -= take;
        }
    }
}

/// Reads what [`BitWriter`] wrote.
struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn read_bit(&mut self) -> bool {
        let b = self.buf[self.pos / 8] & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        b
    }

    fn read_bits(&mut self, n: u8) -> u64 {
        let mut v = 0u64;
        let mut n = n;
        while n > 0 {
            let off = (self.pos % 8) as u8;
            let avail = 8 - off;
            let take = avail.min(n);
            let byte = self.buf[self.pos / 8];
            let bits = (byte >> (avail - take)) & (((1u16 << take) - 1) as u8);
            v = (v << take) | u64::from(bits);
            self.pos += usize::from(take);
            n -= take;
        }
        v
    }
}

/// Delta-of-delta buckets: (prefix bits, prefix length, payload bits).
const DOD_BUCKETS: [(u64, u8, u8); 5] =
    [(0b10, 2, 7), (0b110, 3, 9), (0b1110, 4, 12), (0b11110, 5, 32), (0b11111, 5, 64)];

fn fits(v: i64, bits: u8) -> bool {
    bits == 64 || (-(1i64 << (bits - 1))..(1i64 << (bits - 1))).contains(&v)
}

fn sign_extend(v: u64, bits: u8) -> i64 {
    if bits == 64 {
        return v as i64;
    }
    let shift = 64 - u32::from(bits);
    ((v << shift) as i64) >> shift
}

/// The open chunk of a series, taking samples in time order.
#[derive(Debug, Clone)]
pub struct Head {
    w: BitWriter,
    n: u16,
    first_t: i64,
    last_t: i64,
    last_delta: i64,
    last_v: u64,
    leading: u8,
    trailing: u8,
}

impl Head {
    /// A chunk whose first sample is (t, v).
    pub fn new(t: i64, v: f64) -> Head {
        Head::with_capacity(t, v, 0)
    }

    /// A chunk whose first sample is (t, v), with room for `bytes` of stream.
    pub fn with_capacity(t: i64, v: f64, bytes: usize) -> Head {
        let mut w = BitWriter { buf: Vec::with_capacity(bytes), used: 0 };
        w.write_bits(v.to_bits(), 64);
        Head { w, n: 1, first_t: t, last_t: t, last_delta: 0, last_v: v.to_bits(), leading: 0xff, trailing: 0 }
    }

    /// Rebuilds a chunk from samples in time order (at least one).
    fn from_points(points: &[(i64, f64)]) -> Head {
        let mut h = Head::new(points[0].0, points[0].1);
        for &(t, v) in &points[1..] {
            h.push(t, v);
        }
        h
    }

    /// Appends a sample newer than every sample in the chunk.
    pub fn push(&mut self, t: i64, v: f64) {
        debug_assert!(t > self.last_t, "samples go in time order");
        let delta = t.wrapping_sub(self.last_t);
        let dod = delta.wrapping_sub(self.last_delta);
        if dod == 0 {
            self.w.write_bit(false);
        } else {
            let &(prefix, len, bits) =
                DOD_BUCKETS.iter().find(|&&(_, _, bits)| fits(dod, bits)).expect("the last bucket takes any value");
            self.w.write_bits(prefix, len);
            self.w.write_bits(dod as u64, bits);
        }
        let v = v.to_bits();
        let xor = v ^ self.last_v;
        if xor == 0 {
            self.w.write_bit(false);
        } else {
            self.w.write_bit(true);
            let leading = (xor.leading_zeros() as u8).min(31);
            let trailing = xor.trailing_zeros() as u8;
            if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
                self.w.write_bit(false);
                self.w.write_bits(xor >> self.trailing, 64 - self.leading - self.trailing);
            } else {
                self.w.write_bit(true);
                let sig = 64 - leading - trailing;
                self.w.write_bits(u64::from(leading), 5);
                // 64 significant bits are written as 0: a 6-bit field holds 0..=63.
                self.w.write_bits(u64::from(sig % 64), 6);
                self.w.write_bits(xor >> trailing, sig);
                self.leading = leading;
                self.trailing = trailing;
            }
        }
        self.last_delta = delta;
        self.last_t = t;
        self.last_v = v;
        self.n += 1;
    }

    /// Number of samples.
    pub fn len(&self) -> u16 {
        self.n
    }

    /// Timestamp of the newest sample.
    pub fn last_t(&self) -> i64 {
        self.last_t
    }

    /// Timestamp of the oldest sample.
    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> Iter<'_> {
        Iter::new(self.first_t, self.n, &self.w.buf)
    }

    /// The bit stream.
    fn stream(&self) -> &[u8] {
        &self.w.buf
    }

    /// Bytes this chunk holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.w.buf.capacity()
    }
}

/// A full chunk: its time range, and where it lies. 24 bytes, in memory for the newest sealed
/// chunk of each series, and on disk in front of every chunk's stream for the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    first_t: i64,
    /// `last_t - first_t`; a chunk never spans more (see [`fits_span`]).
    span: u32,
    /// A segment file, or [`MEMORY`].
    segment: u32,
    /// Byte offset in the segment, or the id of a chunk kept in memory.
    offset: u32,
    /// Bytes of the stream.
    bytes: u16,
    n: u16,
}

/// The `segment` of a chunk kept in memory (no history directory, or a failed write).
const MEMORY: u32 = u32::MAX;
/// The `segment` written for "no chunk before this one".
const NONE: u32 = u32::MAX - 1;
/// Bytes of a chunk record before its stream: the previous chunk's [`Sealed`].
const LINK_BYTES: usize = 24;

/// Whether a sample at `t` may join a chunk that starts at `first_t`.
fn fits_span(first_t: i64, t: i64) -> bool {
    t.checked_sub(first_t).is_some_and(|d| u32::try_from(d).is_ok())
}

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
struct Record {
    prev: Option<Sealed>,
    stream: Vec<u8>,
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
    fn read(&self, c: &Sealed) -> Option<Record> {
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
    fn points(&self, c: &Sealed, out: &mut Vec<(i64, f64)>, keep: impl Fn(i64) -> bool) -> Option<Sealed> {
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

    fn read(&self, c: &Sealed) -> Option<Record> {
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

/// Decodes a chunk's samples, oldest first.
pub struct Iter<'a> {
    r: BitReader<'a>,
    left: u16,
    started: bool,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

impl<'a> Iter<'a> {
    fn new(first_t: i64, n: u16, stream: &'a [u8]) -> Iter<'a> {
        Iter {
            r: BitReader { buf: stream, pos: 0 },
            left: n,
            started: false,
            t: first_t,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if !self.started {
            self.started = true;
            self.v = self.r.read_bits(64);
            return Some((self.t, f64::from_bits(self.v)));
        }
        let mut len = 0;
        while len < 5 && self.r.read_bit() {
            len += 1;
        }
        let dod = match len {
            0 => 0,
            _ => {
                let bits = DOD_BUCKETS[len - 1].2;
                sign_extend(self.r.read_bits(bits), bits)
            }
        };
        self.delta = self.delta.wrapping_add(dod);
        self.t = self.t.wrapping_add(self.delta);
        if self.r.read_bit() {
            if self.r.read_bit() {
                self.leading = self.r.read_bits(5) as u8;
                let sig = match self.r.read_bits(6) as u8 {
                    0 => 64,
                    s => s,
                };
                self.trailing = 64 - self.leading - sig;
            }
            let sig = 64 - self.leading - self.trailing;
            self.v ^= self.r.read_bits(sig) << self.trailing;
        }
        Some((self.t, f64::from_bits(self.v)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

/// One series' samples: the open chunk, and the newest sealed one, which leads to the older
/// ones on disk.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    last: Option<Sealed>,
    head: Option<Head>,
}

impl Samples {
    /// Adds a sample, keeping time order; a sample at a time already present replaces it.
    pub fn append(&mut self, t: i64, v: f64, files: &mut ChunkFiles) {
        if let Some(h) = &self.head
            && h.last_t() < t
            && !fits_span(h.first_t(), t)
        {
            // Over 49 days since the chunk began: it ends here.
            self.last = Some(files.seal(h, self.last));
            self.head = None;
        }
        match &mut self.head {
            Some(h) if h.last_t() < t => {
                h.push(t, v);
                if h.len() >= CHUNK_SAMPLES {
                    self.last = Some(files.seal(h, self.last));
                    self.head = None;
                }
            }
            None if self.last.is_none_or(|c| c.last_t() < t) => {
                // A series' chunks are much alike: room for as much as the last one took, so
                // the buffer is allocated once instead of grown (and fragmented) 32 bytes at a time.
                let room = self.last.map_or(0, |c| usize::from(c.bytes) + 8);
                self.head = Some(Head::with_capacity(t, v, room));
            }
            _ => self.insert(t, v, files),
        }
    }

    /// The slow path for a sample older than the newest: the chunks it falls in or before are
    /// decoded and written again (replayed reports are rare and short).
    fn insert(&mut self, t: i64, v: f64, files: &mut ChunkFiles) {
        let head_from = self.head.as_ref().map(Head::first_t);
        if head_from.is_some_and(|f| f <= t) || (self.last.is_none() && self.head.is_some()) {
            let h = self.head.take().expect("checked");
            let mut points: Vec<_> = h.iter().collect();
            put(&mut points, t, v);
            let (full, rest) = chunk_points(&points);
            for c in full {
                self.last = Some(files.seal(&Head::from_points(c), self.last));
            }
            if rest.len() < usize::from(CHUNK_SAMPLES) {
                self.head = Some(Head::from_points(rest));
            } else {
                self.last = Some(files.seal(&Head::from_points(rest), self.last));
            }
            return;
        }
        // Walk back from the newest sealed chunk to the one t falls in (the oldest that ends at
        // or after t), or to the oldest still kept; every chunk from there on is rewritten,
        // because each carries the reference of the one before it.
        let mut chain = Vec::new();
        let mut at = self.last;
        let mut before = None;
        while let Some(c) = at {
            match files.read(&c) {
                Some(r) => {
                    chain.push((c, r.stream));
                    before = r.prev;
                    at = r.prev.filter(|p| p.last_t() >= t);
                }
                None => {
                    before = None;
                    at = None;
                }
            }
        }
        let mut points = Vec::new();
        for (c, stream) in chain.iter().rev() {
            points.extend(Iter::new(c.first_t, c.n, stream));
        }
        put(&mut points, t, v);
        for (c, _) in &chain {
            files.release(c);
        }
        self.last = before;
        let (full, rest) = chunk_points(&points);
        for c in full.into_iter().chain(Some(rest)) {
            self.last = Some(files.seal(&Head::from_points(c), self.last));
        }
    }

    /// Drops what falls before `cutoff` (whole chunks: older sealed ones are past it too, and
    /// their files go with the retention); reports whether anything is left.
    pub fn trim(&mut self, cutoff: i64) -> bool {
        if self.last.is_some_and(|c| c.last_t() < cutoff) {
            self.last = None;
        }
        if self.head.as_ref().is_some_and(|h| h.last_t() < cutoff) {
            self.head = None;
        }
        self.last.is_some() || self.head.is_some()
    }

    /// What [`Snapshot::range`] needs to read the samples in `(start, end]` later, without
    /// this series: the newest sealed chunk if the range reaches into sealed ones, and a copy of
    /// the open chunk if the range reaches into it. `None` if nothing falls in the range.
    pub fn snapshot(&self, start: i64, end: i64) -> Option<Snapshot> {
        let last = self.last.filter(|c| c.last_t() > start);
        let head = self.head.as_ref().filter(|h| h.first_t() <= end && h.last_t() > start).map(|h| OpenCopy {
            first_t: h.first_t,
            n: h.n,
            stream: h.stream().into(),
        });
        (last.is_some() || head.is_some()).then_some(Snapshot { last, head })
    }

    /// Samples in `(start, end]`, oldest first.
    #[cfg(test)]
    pub fn range(&self, start: i64, end: i64, files: &ChunkFiles, out: &mut Vec<(i64, f64)>) {
        if let Some(s) = self.snapshot(start, end) {
            s.range(start, end, &files.reader(), out);
        }
    }

    /// Bytes held on the heap for the samples (the open chunk's).
    pub fn heap_bytes(&self) -> usize {
        self.head.as_ref().map_or(0, Head::heap_bytes)
    }

    /// Number of samples in chunks that end at or after `cutoff` (reads the sealed chunks'
    /// references back).
    pub fn len(&self, files: &ChunkFiles, cutoff: i64) -> usize {
        let mut n = self.head.as_ref().map_or(0, |h| usize::from(h.len()));
        let mut at = self.last;
        while let Some(c) = at.filter(|c| c.last_t() >= cutoff) {
            n += usize::from(c.len());
            at = files.read(&c).and_then(|r| r.prev);
        }
        n
    }
}

/// Where a series' samples in a range are, taken under the history's lock and read without it.
#[derive(Debug)]
pub struct Snapshot {
    last: Option<Sealed>,
    head: Option<OpenCopy>,
}

/// The open chunk's stream as it was.
#[derive(Debug)]
struct OpenCopy {
    first_t: i64,
    n: u16,
    stream: Box<[u8]>,
}

impl Snapshot {
    /// The newest sample in `(start, end]`: from the open chunk if it has one there, else from
    /// the newest sealed chunk that does.
    pub fn latest(&self, start: i64, end: i64, reader: &ChunkReader) -> Option<(i64, f64)> {
        let in_range = |&(t, _): &(i64, f64)| t > start && t <= end;
        if let Some(h) = &self.head
            && let Some(p) = Iter::new(h.first_t, h.n, &h.stream).filter(in_range).last()
        {
            return Some(p);
        }
        let mut at = self.last;
        while let Some(c) = at.filter(|c| c.last_t() > start) {
            let r = reader.read(&c)?;
            if c.first_t() <= end
                && let Some(p) = Iter::new(c.first_t, c.n, &r.stream).filter(in_range).last()
            {
                return Some(p);
            }
            at = r.prev;
        }
        None
    }

    /// Samples in `(start, end]`, oldest first: the sealed chunks walked back from the newest,
    /// then the open chunk's.
    pub fn range(&self, start: i64, end: i64, reader: &ChunkReader, out: &mut Vec<(i64, f64)>) {
        // Newest first while walking back; each chunk's points are in order.
        let mut chunks: Vec<Vec<(i64, f64)>> = Vec::new();
        let mut at = self.last;
        while let Some(c) = at.filter(|c| c.last_t() > start) {
            if c.first_t() > end {
                at = reader.read(&c).and_then(|r| r.prev);
                continue;
            }
            let mut pts = Vec::new();
            at = reader.points(&c, &mut pts, |t| t > start && t <= end);
            chunks.push(pts);
        }
        for pts in chunks.iter().rev() {
            out.extend_from_slice(pts);
        }
        if let Some(h) = &self.head {
            out.extend(Iter::new(h.first_t, h.n, &h.stream).filter(|&(t, _)| t > start && t <= end));
        }
    }
}

/// A sample: (time in ms, value).
type Point = (i64, f64);

/// Splits time-ordered points (at least one) into full chunks and a last, possibly shorter, one:
/// at most [`CHUNK_SAMPLES`] each, none spanning more than [`fits_span`] allows.
fn chunk_points(points: &[Point]) -> (Vec<&[Point]>, &[Point]) {
    let mut full = Vec::new();
    let mut start = 0;
    for i in 1..points.len() {
        if i - start == usize::from(CHUNK_SAMPLES) || !fits_span(points[start].0, points[i].0) {
            full.push(&points[start..i]);
            start = i;
        }
    }
    (full, &points[start..])
}

/// Inserts (t, v) into time-ordered points, replacing a sample at the same time.
fn put(points: &mut Vec<(i64, f64)>, t: i64, v: f64) {
    let i = points.partition_point(|&(x, _)| x < t);
    if points.get(i).is_some_and(|&(x, _)| x == t) {
        points[i].1 = v;
    } else {
        points.insert(i, (t, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(points: &[(i64, f64)]) {
        let mut h = Head::new(points[0].0, points[0].1);
        for &(t, v) in &points[1..] {
            h.push(t, v);
        }
        let back: Vec<_> = h.iter().collect();
        let mut files = ChunkFiles::memory();
        let mut sealed = Vec::new();
        if fits_span(h.first_t(), h.last_t()) {
            let c = files.seal(&h, None);
            files.reader().points(&c, &mut sealed, |_| true);
        } else {
            sealed.clone_from(&back);
        }
        for (got, want) in [(&back, points), (&sealed, points)] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.0, w.0);
                assert_eq!(g.1.to_bits(), w.1.to_bits(), "values come back bit for bit");
            }
        }
    }

    #[test]
    fn every_kind_of_step_comes_back_exactly() {
        roundtrip(&[(1000, 1.0)]);
        // Regular, jittered, long gaps, huge gaps; constant, slowly and wildly changing values,
        // special floats.
        let mut pts = vec![(1_700_000_000_000i64, 0.0)];
        let steps = [5000i64, 5000, 5003, 4990, 5300, 7000, 60_000, 1, 9_000_000_000, 5000, 5000];
        let values = [0.0, 0.5, 0.51, f64::NAN, f64::INFINITY, -0.0, 1e300, 42.0, 42.0, f64::MIN_POSITIVE, -3.25];
        for (s, v) in steps.iter().zip(values) {
            let t = pts.last().unwrap().0 + s;
            pts.push((t, v));
        }
        roundtrip(&pts);
        let stale = f64::from_bits(fleet_rules::promql::STALE_NAN_BITS);
        roundtrip(&[(0, 1.0), (1, stale), (2, 1.0), (i64::MAX / 2, 5.0)]);
    }

    #[test]
    fn a_realistic_series_compresses_to_a_few_bits_a_sample() {
        let mut h = Head::new(0, 0.0);
        let mut x = 12345u64;
        for i in 1..CHUNK_SAMPLES as i64 {
            // ±3 ms of jitter, a counter growing by a few thousand a sample.
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            h.push(i * 5000 + (x >> 62) as i64 - 1, (i * 4096 + (x >> 52) as i64) as f64);
        }
        let mut files = ChunkFiles::memory();
        files.seal(&h, None);
        let bytes = files.memory_bytes();
        assert!(bytes < usize::from(CHUNK_SAMPLES) * 6, "{bytes} bytes for {CHUNK_SAMPLES} samples");
    }

    #[test]
    fn samples_out_of_order_land_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ChunkFiles::open(dir.path().join("history")).unwrap();
        let mut s = Samples::default();
        let n = 3 * i64::from(CHUNK_SAMPLES);
        // Every other sample first, then the rest, newest first: most go through insert.
        for t in (0..n).filter(|t| t % 2 == 0) {
            s.append(t * 10, t as f64, &mut files);
        }
        for t in (0..n).filter(|t| t % 2 == 1).rev() {
            s.append(t * 10, t as f64, &mut files);
        }
        s.append(50, -1.0, &mut files); // replaces sample 5
        let mut out = Vec::new();
        s.range(-1, i64::MAX, &files, &mut out);
        assert_eq!(out.len(), n as usize);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "time order");
        assert_eq!(out[5], (50, -1.0));
        assert_eq!(out[7], (70, 7.0));
        assert_eq!(s.len(&files, i64::MIN), n as usize);
        out.clear();
        s.range(100, 200, &files, &mut out);
        assert_eq!(out.first().unwrap().0, 110, "start is exclusive");
        assert_eq!(out.last().unwrap().0, 200, "end is inclusive");
    }

    #[test]
    fn random_appends_agree_with_a_sorted_map() {
        let mut x = 7u64;
        let mut rand = move |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            // Sealed chunks in memory and in segment files: the same chains either way.
            let mut files =
                if round % 2 == 0 { ChunkFiles::memory() } else { ChunkFiles::open(dir.path().join("h")).unwrap() };
            let mut s = Samples::default();
            let mut model = std::collections::BTreeMap::new();
            let mut now = 0i64;
            for _ in 0..1500 {
                // Mostly in order; sometimes a late sample, sometimes a duplicate time.
                let t = match rand(10) {
                    0 => now - rand(4000) as i64,
                    1 => now,
                    _ => {
                        now += 1 + rand(10) as i64;
                        now
                    }
                };
                let v = match rand(3) {
                    0 => 1.0,
                    1 => rand(1000) as f64 / 7.0,
                    _ => t as f64,
                };
                s.append(t, v, &mut files);
                model.insert(t, v);
            }
            let cutoff = rand(now as u64) as i64;
            s.trim(cutoff);
            files.trim(cutoff);
            let end = now - rand(100) as i64;
            let start = (cutoff + rand(100) as i64).min(end);
            let mut got = Vec::new();
            s.range(start, end, &files, &mut got);
            let want: Vec<_> = model.range(..=end).filter(|&(&t, _)| t > start).map(|(&t, &v)| (t, v)).collect();
            assert_eq!(got, want);
            let latest = s.snapshot(start, end).and_then(|snap| snap.latest(start, end, &files.reader()));
            assert_eq!(latest, want.last().copied(), "the newest sample alone");
        }
    }

    #[test]
    fn a_chunk_never_spans_more_than_its_header_can_say() {
        let mut files = ChunkFiles::memory();
        let mut s = Samples::default();
        let day = 86_400_000i64;
        let times = [0, 1000, 60 * day, 60 * day + 1000, 200 * day, 10, 100 * day];
        for (i, &t) in times.iter().enumerate() {
            s.append(t, i as f64, &mut files);
        }
        let mut out = Vec::new();
        s.range(-1, i64::MAX, &files, &mut out);
        let mut want: Vec<_> = times.iter().enumerate().map(|(i, &t)| (t, i as f64)).collect();
        want.sort_by_key(|p| p.0);
        assert_eq!(out, want);
        let mut at = s.last;
        let mut chunks = 0;
        while let Some(c) = at {
            assert!(c.last_t() - c.first_t() <= i64::from(u32::MAX));
            chunks += 1;
            at = files.read(&c).unwrap().prev;
        }
        assert_eq!(chunks, 2, "0..1000 with 10, then 60d..100d; 200d is open");
    }

    #[test]
    fn trim_drops_whole_expired_chunks_only() {
        let mut files = ChunkFiles::memory();
        let mut s = Samples::default();
        for t in 0..(2 * i64::from(CHUNK_SAMPLES) + 10) {
            s.append(t, 1.0, &mut files);
        }
        assert!(s.trim(i64::from(CHUNK_SAMPLES) + 5));
        let cutoff = i64::from(CHUNK_SAMPLES) + 5;
        assert_eq!(
            s.len(&files, cutoff),
            i64::from(CHUNK_SAMPLES) as usize + 10,
            "the first chunk went, the second stays whole"
        );
        assert!(!s.trim(i64::MAX));
    }

    #[test]
    fn sealed_chunks_live_in_segment_files_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history");
        std::fs::create_dir_all(&history).unwrap();
        std::fs::write(history.join("chunks-000007"), b"left by an earlier run").unwrap();
        let mut files = ChunkFiles::open(history.clone()).unwrap();
        assert!(!history.join("chunks-000007").exists(), "old segments are removed at start-up");
        let mut s = Samples::default();
        let n = 5 * i64::from(CHUNK_SAMPLES);
        for t in 0..n {
            s.append(t * 1000, (t * t) as f64, &mut files);
        }
        assert_eq!(s.heap_bytes(), s.head.as_ref().map_or(0, Head::heap_bytes), "sealed chunks are not in memory");
        assert_eq!(files.memory_bytes(), 0);
        assert!(files.disk_bytes() > 0);
        let mut out = Vec::new();
        s.range(-1, i64::MAX, &files, &mut out);
        assert_eq!(out.len(), n as usize);
        assert!(out.iter().all(|&(t, v)| v == ((t / 1000) * (t / 1000)) as f64));
        // Everything expires: the segment being written stays, older ones go.
        s.trim(i64::MAX);
        files.trim(i64::MAX);
        let left = std::fs::read_dir(&history).unwrap().count();
        assert!(left <= 1, "{left} segment files left");
        assert_eq!(files.errors(), 0);
    }
}

//! One series' samples as the history keeps them: the open [`Head`] and the newest sealed
//! chunk's reference, which leads to the older ones; late samples rewrite the chunks they fall
//! in. [`Snapshot`] is what a query takes under the history's lock to read without it.

use super::gorilla::{Head, Iter};
use super::segments::{ChunkFiles, ChunkReader, Sealed};
use super::{CHUNK_SAMPLES, fits_span};

/// One series' samples: the open chunk, and the newest sealed one, which leads to the older
/// ones on disk.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub(super) last: Option<Sealed>,
    pub(super) head: Option<Head>,
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

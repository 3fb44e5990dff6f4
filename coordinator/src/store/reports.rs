//! The report log: every stored report, appended to segment files under `data_dir/reports`.
//!
//! Reports are written once, read back once at start-up (to rebuild the registry and the
//! history), and deleted whole when they pass the retention, so they are kept the way a
//! write-ahead log is, not in a B-tree: a group commit is one positioned write of one or more
//! frames and one `fdatasync`, and retention deletes a file. sled, which held them before, grew
//! its memory with every page it wrote (docs/benchmarks.md); this costs a few bytes of index per
//! host and segment.
//!
//! A segment is `<id>.seg` (ids increase): an 8-byte magic, then frames. A frame is a little-
//! endian `u32` body length, the CRC-32 of the body, and the body: a codec byte (raw or
//! deflate) and the records of one group commit. A record is the host name (`u16` length), the
//! report's time, boot id and sequence number (`i64`, `u64`, `u64`), and the protobuf `Report`
//! (`u32` length), so listing a host's reports needs no protobuf decoding.
//!
//! The newest segment may end in a frame a crash cut short: it was never synced, so never
//! acknowledged, and the load cuts it off. Damage anywhere else is not repaired silently: the
//! coordinator refuses to start and says which file to move aside.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: &[u8; 8] = b"fleetrl1";
/// A segment is closed for writing at this size.
const SEGMENT_BYTES: u64 = 128 << 20;
/// A frame's records, uncompressed, at most (a longer commit is split into several frames).
const FRAME_PAYLOAD: usize = 8 << 20;
/// A frame read back is refused beyond these sizes (it can only be damage).
const MAX_BODY: u32 = 64 << 20;
const MAX_PAYLOAD: u64 = 64 << 20;
const CODEC_RAW: u8 = 0;
const CODEC_DEFLATE: u8 = 1;
/// Bytes of a record besides the host name and the report.
const RECORD_FIXED: usize = 2 + 8 + 8 + 8 + 4;

/// One report to append.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The agent name.
    pub host: &'a str,
    /// When the agent took the report.
    pub timestamp_ms: i64,
    /// The agent run.
    pub boot_id: u64,
    /// Sequence number in that run.
    pub seq: u64,
    /// The protobuf `Report`.
    pub encoded: &'a [u8],
}

/// Where a segment cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Byte offset of the first unreadable frame.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file could not be read or written.
    #[error("{}: {}", path.display(), fleet_common::io_reason(source))]
    Io { path: PathBuf, source: io::Error },
    /// A segment other than the newest is damaged.
    #[error(
        "report log segment {path} is damaged at byte {offset}: {reason}; move it aside (mv {path} {path}.damaged) \
         to start without the reports it holds, or restore it from a backup",
        path = .0.path.display(), offset = .0.offset, reason = .0.reason
    )]
    Damaged(Damage),
    /// An earlier write failed in a way that could not be undone; nothing more is appended.
    #[error("the report log stopped taking writes after an earlier failure ({0}); restart the coordinator")]
    Poisoned(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug)]
struct Segment {
    id: u64,
    /// Bytes of complete, synced frames (including the magic).
    len: u64,
    /// Reports in it that are indexed (within the retention when it was loaded).
    count: u64,
    /// Time range of those reports (agent clocks); `i64::MAX..i64::MIN` while it holds none.
    min_ms: i64,
    max_ms: i64,
    /// When it was created (coordinator clock), to close it after `roll_every`.
    created_ms: i64,
}

impl Segment {
    fn new(id: u64, len: u64, created_ms: i64) -> Segment {
        Segment { id, len, count: 0, min_ms: i64::MAX, max_ms: i64::MIN, created_ms }
    }

    fn add(&mut self, ts: i64) {
        self.count += 1;
        self.min_ms = self.min_ms.min(ts);
        self.max_ms = self.max_ms.max(ts);
    }
}

/// A host's reports in one segment.
#[derive(Debug, Clone, Copy)]
struct Span {
    segment: u64,
    count: u32,
    min_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Oldest first. The newest is the one appended to while `active` is open.
    segments: VecDeque<Segment>,
    active: Option<File>,
    next_id: u64,
    /// Per host, the segments holding its reports, oldest first.
    hosts: HashMap<Box<str>, VecDeque<Span>>,
    /// Reports taken before this were past the window at the load: still in their segment
    /// until it goes, but not held.
    floor_ms: i64,
    /// Whether appends go to the history at once: false from [`ReportLog::load`] until
    /// [`ReportLog::replay`] has read everything, appends included.
    replayed: bool,
    poisoned: Option<String>,
}

impl Inner {
    fn index(&mut self, host: &str, segment: u64, ts: i64) {
        let spans = match self.hosts.get_mut(host) {
            Some(s) => s,
            None => self.hosts.entry(host.into()).or_default(),
        };
        match spans.back_mut() {
            Some(s) if s.segment == segment => {
                s.count += 1;
                s.min_ms = s.min_ms.min(ts);
            }
            _ => spans.push_back(Span { segment, count: 1, min_ms: ts }),
        }
    }

    fn unindex(&mut self, removed: &HashSet<u64>) {
        self.hosts.retain(|_, spans| {
            spans.retain(|s| !removed.contains(&s.segment));
            !spans.is_empty()
        });
    }
}

/// What [`ReportLog::host_reports`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostReports {
    /// Reports of the host held.
    pub count: u64,
    /// When the oldest was taken (0 if none).
    pub oldest_ms: i64,
    /// The newest ones asked for, oldest first: (boot id, seq, time).
    pub newest: VecDeque<(u64, u64, i64)>,
}

/// The report log of one coordinator.
#[derive(Debug)]
pub struct ReportLog {
    dir: PathBuf,
    roll_every_ms: i64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

/// What one scan of a segment found.
struct Scanned {
    /// Bytes up to the end of the last good frame.
    good_len: u64,
    damage: Option<Damage>,
}

/// Reads the frames of the segment at `path` from byte `from` (a frame boundary; 0 for the
/// start) up to `limit` bytes (its whole length if `None`), calling `f` for each record; stops
/// at the first damaged frame.
fn scan_segment(
    path: &Path,
    from: u64,
    limit: Option<u64>,
    mut f: impl FnMut(&Record<'_>),
) -> Result<Scanned, LogError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let end = limit.map_or(size, |l| l.min(size));
    let damage = |offset: u64, reason: String| Damage { path: path.to_path_buf(), offset, reason };
    let mut pos = from.max(MAGIC.len() as u64);
    if from == 0 {
        let mut magic = [0u8; 8];
        if end < 8 || file.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Ok(Scanned { good_len: 0, damage: Some(damage(0, "not a fleet report log segment".into())) });
        }
    } else {
        io::Seek::seek(&mut file, io::SeekFrom::Start(pos)).map_err(io_err(path))?;
    }
    let mut r = io::BufReader::with_capacity(1 << 20, file.take(end.saturating_sub(pos)));
    let mut body = Vec::new();
    let mut payload = Vec::new();
    while pos < end {
        let mut head = [0u8; 8];
        if end - pos < 8 {
            return Ok(Scanned { good_len: pos, damage: Some(damage(pos, "a frame header is cut short".into())) });
        }
        r.read_exact(&mut head).map_err(io_err(path))?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_BODY || u64::from(len) > end - pos - 8 {
            let reason = if u64::from(len) > end - pos - 8 && len <= MAX_BODY {
                "a frame is cut short".to_string()
            } else {
                format!("a frame claims {len} bytes")
            };
            return Ok(Scanned { good_len: pos, damage: Some(damage(pos, reason)) });
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body).map_err(io_err(path))?;
        if crc32fast::hash(&body) != crc {
            return Ok(Scanned { good_len: pos, damage: Some(damage(pos, "checksum mismatch".into())) });
        }
        let records: &[u8] = match body[0] {
            CODEC_RAW => &body[1..],
            CODEC_DEFLATE => {
                payload.clear();
                let mut d = flate2::read::DeflateDecoder::new(&body[1..]).take(MAX_PAYLOAD + 1);
                if let Err(e) = d.read_to_end(&mut payload) {
                    return Ok(Scanned { good_len: pos, damage: Some(damage(pos, format!("cannot inflate: {e}"))) });
                }
                &payload
            }
            c => return Ok(Scanned { good_len: pos, damage: Some(damage(pos, format!("unknown codec {c}"))) }),
        };
        if let Err(reason) = each_record(records, &mut f) {
            return Ok(Scanned { good_len: pos, damage: Some(damage(pos, reason)) });
        }
        pos += 8 + u64::from(len);
    }
    Ok(Scanned { good_len: pos, damage: None })
}

fn each_record(mut b: &[u8], f: &mut impl FnMut(&Record<'_>)) -> Result<(), String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("a record is cut short".into());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    while !b.is_empty() {
        let n = u16::from_le_bytes(take(&mut b, 2)?.try_into().expect("2 bytes")) as usize;
        let host = std::str::from_utf8(take(&mut b, n)?).map_err(|_| "a host name is not UTF-8".to_string())?;
        let fixed = take(&mut b, 28)?;
        let len = u32::from_le_bytes(fixed[24..].try_into().expect("4 bytes")) as usize;
        let encoded = take(&mut b, len)?;
        f(&Record {
            host,
            timestamp_ms: u64_at(&fixed[..8]) as i64,
            boot_id: u64_at(&fixed[8..16]),
            seq: u64_at(&fixed[16..24]),
            encoded,
        });
    }
    Ok(())
}

/// Appends one frame holding `records` to `out`.
fn encode_frame(records: &[Record<'_>], out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(records.iter().map(|r| RECORD_FIXED + r.host.len() + r.encoded.len()).sum());
    for r in records {
        payload.extend_from_slice(&(r.host.len() as u16).to_le_bytes());
        payload.extend_from_slice(r.host.as_bytes());
        payload.extend_from_slice(&r.timestamp_ms.to_le_bytes());
        payload.extend_from_slice(&r.boot_id.to_le_bytes());
        payload.extend_from_slice(&r.seq.to_le_bytes());
        payload.extend_from_slice(&(r.encoded.len() as u32).to_le_bytes());
        payload.extend_from_slice(r.encoded);
    }
    // Reports of one commit repeat their field layout, service names, mount points and
    // interfaces: the fastest deflate level takes them to about a fifth.
    let mut body = Vec::with_capacity(payload.len() / 3 + 64);
    body.push(CODEC_DEFLATE);
    let mut z = flate2::write::DeflateEncoder::new(body, flate2::Compression::fast());
    z.write_all(&payload).expect("writing to memory");
    let mut body = z.finish().expect("writing to memory");
    if body.len() > payload.len() {
        body.clear();
        body.push(CODEC_RAW);
        body.extend_from_slice(&payload);
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl ReportLog {
    /// Opens the log in `dir` (created if missing). Existing segments are not read until
    /// [`ReportLog::load`]; appends always go to a new segment.
    pub fn open(dir: PathBuf, retention_ms: i64) -> Result<ReportLog, LogError> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut next_id = 1;
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Some(id) = segment_id(&e.path()) {
                next_id = next_id.max(id + 1);
            }
        }
        // Twelve segments to a retention window: old reports go a twelfth of it after expiring.
        let roll_every_ms = (retention_ms / 12).clamp(60_000, 600_000);
        Ok(ReportLog {
            dir,
            roll_every_ms,
            segment_bytes: SEGMENT_BYTES,
            inner: Mutex::new(Inner { next_id, replayed: true, ..Default::default() }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("report log lock poisoned")
    }

    /// Reads every segment, oldest first (appends that came before go to it too), calling `f` with each report taken at or after
    /// `since_ms`, and indexes those `f` keeps (returns true for); deletes segments that hold
    /// nothing kept. Cuts off a frame the newest segment ends in if a crash left it unfinished
    /// (returned, to be logged).
    pub fn load(&self, since_ms: i64, mut f: impl FnMut(&Record<'_>) -> bool) -> Result<Option<Damage>, LogError> {
        let mut ids: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            ids.extend(segment_id(&e.path()));
        }
        ids.sort_unstable();
        let mut inner = self.lock();
        // What is on disk is the truth: forget what appends before the load indexed.
        inner.segments.clear();
        inner.hosts.clear();
        inner.active = None;
        inner.floor_ms = since_ms;
        inner.replayed = false;
        let now = fleet_common::now_ms();
        let mut repaired = None;
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(&self.dir, id);
            let mut seg = Segment::new(id, 0, now);
            let scanned = scan_segment(&path, 0, None, |r| {
                if r.timestamp_ms >= since_ms && f(r) {
                    seg.add(r.timestamp_ms);
                    inner.index(r.host, id, r.timestamp_ms);
                }
            })?;
            seg.len = scanned.good_len;
            if let Some(d) = scanned.damage {
                if i + 1 < ids.len() {
                    return Err(LogError::Damaged(d));
                }
                let file = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                if seg.len < 8 {
                    drop(file);
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                } else {
                    file.set_len(seg.len).and_then(|()| file.sync_all()).map_err(io_err(&path))?;
                }
                repaired = Some(d);
            }
            if seg.count == 0 {
                if path.exists() {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
            } else {
                inner.segments.push_back(seg);
            }
        }
        sync_dir(&self.dir)?;
        Ok(repaired)
    }

    /// Appends `records` and makes them durable (one write and one `fdatasync`) before
    /// returning. On failure nothing of them counts: the segment is cut back to where it was.
    /// Returns whether the caller hands them to the history: not while [`ReportLog::replay`]
    /// is still to read them.
    pub fn append(&self, records: &[Record<'_>]) -> Result<bool, LogError> {
        if records.is_empty() {
            return Ok(self.lock().replayed);
        }
        let mut buf = Vec::new();
        let mut start = 0;
        let mut size = 0;
        for (i, r) in records.iter().enumerate() {
            size += RECORD_FIXED + r.host.len() + r.encoded.len();
            if size >= FRAME_PAYLOAD || i + 1 == records.len() {
                encode_frame(&records[start..=i], &mut buf);
                start = i + 1;
                size = 0;
            }
        }
        let mut inner = self.lock();
        if let Some(why) = &inner.poisoned {
            return Err(LogError::Poisoned(why.clone()));
        }
        let now = fleet_common::now_ms();
        let roll = match (inner.active.as_ref(), inner.segments.back()) {
            (Some(_), Some(s)) => s.len >= self.segment_bytes || now - s.created_ms >= self.roll_every_ms,
            _ => true,
        };
        if roll {
            self.start_segment(&mut inner, now)?;
        }
        let id = inner.segments.back().expect("a segment was started").id;
        let path = segment_path(&self.dir, id);
        let at = inner.segments.back().expect("a segment was started").len;
        let file = inner.active.as_ref().expect("a segment is open");
        if let Err(e) = file.write_all_at(&buf, at).and_then(|()| file.sync_data()) {
            // Cut the segment back so that the next frame follows the last good one. If even
            // that fails, the file may hold a torn frame that later frames would follow:
            // stop appending (a restart treats the end of the newest segment as unfinished).
            if let Err(e2) = file.set_len(at).and_then(|()| file.sync_data()) {
                inner.poisoned = Some(format!("{}: {}", path.display(), fleet_common::io_reason(&e2)));
            }
            return Err(LogError::Io { path, source: e });
        }
        let seg = inner.segments.back_mut().expect("a segment was started");
        seg.len += buf.len() as u64;
        for r in records {
            seg.add(r.timestamp_ms);
        }
        for r in records {
            inner.index(r.host, id, r.timestamp_ms);
        }
        Ok(inner.replayed)
    }

    /// Reads every report taken at or after `since_ms` back, oldest segment first, for the
    /// history: those the load found, then those appended since, until it has read them all;
    /// from then on [`ReportLog::append`] tells the writer to hand new ones over itself, so
    /// each report reaches the history once, in the order of the log. Stops early, with
    /// appends still left to it, when `stop` says so. Returns how many reports it read.
    pub fn replay(
        &self,
        since_ms: i64,
        stop: impl Fn() -> bool,
        mut f: impl FnMut(&Record<'_>),
    ) -> Result<u64, LogError> {
        let mut at: Option<(u64, u64)> = None;
        let mut n = 0u64;
        loop {
            if stop() {
                return Ok(n);
            }
            // The next stretch to read: what is left of the current segment, or the next one.
            let next = {
                let mut inner = self.lock();
                let next = inner.segments.iter().find_map(|s| match at {
                    Some((id, pos)) if s.id == id && pos < s.len => Some((s.id, pos, s.len)),
                    Some((id, _)) if s.id <= id => None,
                    _ => Some((s.id, 0, s.len)),
                });
                if next.is_none() {
                    inner.replayed = true;
                }
                next
            };
            let Some((id, from, len)) = next else { return Ok(n) };
            let path = segment_path(&self.dir, id);
            let scanned = scan_segment(&path, from, Some(len), |r| {
                if r.timestamp_ms >= since_ms {
                    n += 1;
                    f(r);
                }
            });
            match scanned {
                Ok(s) if s.damage.is_none() => at = Some((id, len)),
                Ok(s) => return Err(LogError::Damaged(s.damage.expect("checked"))),
                // Deleted by the retention since: nothing in it was needed.
                Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => at = Some((id, len)),
                Err(e) => return Err(e),
            }
        }
    }

    fn start_segment(&self, inner: &mut Inner, now: i64) -> Result<(), LogError> {
        inner.active = None;
        let id = inner.next_id;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io_err(&path))?;
        file.write_all_at(MAGIC, 0).and_then(|()| file.sync_all()).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        inner.next_id += 1;
        inner.segments.push_back(Segment::new(id, MAGIC.len() as u64, now));
        inner.active = Some(file);
        Ok(())
    }

    /// Deletes the segments whose every report was taken before `cutoff_ms`; returns how many
    /// reports went with them.
    pub fn trim(&self, cutoff_ms: i64) -> Result<u64, LogError> {
        let mut inner = self.lock();
        let active = inner.active.as_ref().and(inner.segments.back().map(|s| s.id));
        let mut removed = HashSet::new();
        let mut reports = 0;
        let mut paths = Vec::new();
        inner.segments.retain(|s| {
            let expired = if s.count == 0 { Some(s.id) != active } else { s.max_ms < cutoff_ms };
            if expired {
                removed.insert(s.id);
                reports += s.count;
                paths.push(segment_path(&self.dir, s.id));
            }
            !expired
        });
        if removed.is_empty() {
            return Ok(0);
        }
        if active.is_some_and(|a| removed.contains(&a)) {
            inner.active = None;
        }
        inner.unindex(&removed);
        drop(inner);
        for p in paths {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::Io { path: p, source: e }),
            }
        }
        Ok(reports)
    }

    /// How many reports of `host` are held, the oldest one's time, and the newest `limit` taken
    /// at or after `since_ms`, oldest first. With a `limit`, reads the segments holding the
    /// host's reports, newest first, and stops once no older segment can hold a newer report
    /// than those found: usually the newest segment alone. Damage in a segment it reads is an
    /// error, not a shorter answer.
    pub fn host_reports(&self, host: &str, since_ms: i64, limit: usize) -> Result<HostReports, LogError> {
        let (spans, segments, since_ms): (Vec<Span>, HashMap<u64, (u64, i64)>, i64) = {
            let inner = self.lock();
            let spans: Vec<Span> = inner.hosts.get(host).map(|s| s.iter().copied().collect()).unwrap_or_default();
            let segments = inner.segments.iter().map(|s| (s.id, (s.len, s.max_ms))).collect();
            (spans, segments, since_ms.max(inner.floor_ms))
        };
        let mut out = HostReports {
            count: spans.iter().map(|s| u64::from(s.count)).sum(),
            oldest_ms: spans.iter().map(|s| s.min_ms).min().unwrap_or(0),
            newest: VecDeque::new(),
        };
        if limit == 0 {
            return Ok(out);
        }
        // Agents resend what they buffered while away, so a segment may hold reports older
        // than the one before it: the newest time in this span or any older one.
        let newest_up_to: Vec<i64> = spans
            .iter()
            .scan(i64::MIN, |newest, span| {
                *newest = (*newest).max(segments.get(&span.segment).map_or(i64::MIN, |s| s.1));
                Some(*newest)
            })
            .collect();
        let mut found: Vec<(i64, u64, u64)> = Vec::new();
        for (i, span) in spans.iter().enumerate().rev() {
            if newest_up_to[i] < since_ms || (found.len() == limit && newest_up_to[i] < found[0].0) {
                break;
            }
            let Some(&(len, _)) = segments.get(&span.segment) else { continue };
            let path = segment_path(&self.dir, span.segment);
            let scanned = scan_segment(&path, 0, Some(len), |r| {
                if r.host == host && r.timestamp_ms >= since_ms {
                    found.push((r.timestamp_ms, r.boot_id, r.seq));
                }
            });
            match scanned {
                Ok(Scanned { damage: Some(damage), .. }) => return Err(LogError::Damaged(damage)),
                Ok(_) => {}
                // Deleted by the retention since the index was read.
                Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            // Keep the newest `limit`: memory bounded by the limit, not by what the host sent.
            found.sort_unstable();
            found.drain(..found.len().saturating_sub(limit));
        }
        out.newest = found.into_iter().map(|(t, b, s)| (b, s, t)).collect();
        Ok(out)
    }

    /// Gives up on [`ReportLog::replay`] (it failed): appends go to the history at once.
    pub fn abandon_replay(&self) {
        self.lock().replayed = true;
    }

    /// Whether every report has reached the history (see [`ReportLog::replay`]).
    pub fn replayed(&self) -> bool {
        self.lock().replayed
    }

    /// Reports held, over all hosts.
    pub fn held(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.count).sum()
    }

    /// Bytes of segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.lock().segments.iter().map(|s| s.len).sum()
    }

    /// Where the log lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn segment_id(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let id = name.strip_suffix(".seg")?;
    if id.len() != 10 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// A report as the tests see it: (host, seq, time, payload).
    type Rec = (String, u64, i64, Vec<u8>);

    fn rec(host: &str, seq: u64, ts: i64) -> Rec {
        (host.to_string(), seq, ts, format!("report {seq} of {host}").into_bytes())
    }

    /// Appends and returns whether the caller hands the reports to the history.
    fn append(log: &ReportLog, recs: &[Rec]) -> bool {
        let records: Vec<Record<'_>> = recs
            .iter()
            .map(|(h, seq, ts, e)| Record { host: h, timestamp_ms: *ts, boot_id: 1, seq: *seq, encoded: e })
            .collect();
        log.append(&records).unwrap()
    }

    /// Every record loaded.
    fn load(log: &ReportLog, since: i64) -> (Vec<Rec>, Option<Damage>) {
        let mut out = vec![];
        let damage = log
            .load(since, |r| {
                out.push((r.host.to_string(), r.seq, r.timestamp_ms, r.encoded.to_vec()));
                true
            })
            .unwrap();
        (out, damage)
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| segment_id(p).is_some()).collect();
        v.sort();
        v
    }

    #[test]
    fn reports_load_back_in_order_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let written = [rec("pc2", 1, 1000), rec("main-pc", 1, 1001), rec("pc2", 2, 2000)];
        {
            let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
            append(&log, &written[..2]);
            append(&log, &written[2..]);
        }
        // A crash in the middle of the next commit: a frame header and part of its body.
        let seg = segments(dir.path()).pop().unwrap();
        let good = std::fs::metadata(&seg).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, CODEC_RAW, 9, 9]).unwrap();
        drop(f);

        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        let (got, damage) = load(&log, 0);
        assert_eq!(got, written);
        let damage = damage.expect("the torn frame is reported");
        assert_eq!((damage.path.as_path(), damage.offset), (seg.as_path(), good));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good, "cut back to the last whole frame");

        append(&log, &[rec("pc2", 3, 3000)]);
        assert_eq!(segments(dir.path()).len(), 2, "appends after a restart go to a new segment");
        drop(log);
        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        let (got, damage) = load(&log, 0);
        assert_eq!((got.len(), damage), (4, None));
        assert_eq!(log.held(), 4);
    }

    #[test]
    fn the_history_replay_follows_appends_until_it_has_read_everything() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
            append(&log, &[rec("pc2", 1, 1000), rec("pc2", 2, 2000)]);
        }
        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        load(&log, 0);
        let to_history = |recs: &[Rec]| append(&log, recs);
        assert!(!to_history(&[rec("pc2", 3, 3000)]), "the replay will read it");
        let mut seen = vec![];
        let n = log
            .replay(
                0,
                || false,
                |r| {
                    seen.push(r.seq);
                    if r.seq == 1 {
                        // A commit while the replay runs: after what it has read, so it is read too.
                        assert!(!to_history(&[rec("pc2", 4, 4000)]));
                    }
                },
            )
            .unwrap();
        assert_eq!((n, seen), (4, vec![1, 2, 3, 4]), "each report once, in the order of the log");
        assert!(log.replayed());
        assert!(to_history(&[rec("pc2", 5, 5000)]), "the writer hands it over itself");
    }

    #[test]
    fn damage_in_an_older_segment_refuses_the_load_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for seq in 1..=2 {
            let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
            append(&log, &[rec("pc2", seq, seq as i64 * 1000)]);
        }
        let first = segments(dir.path()).remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();

        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        let err = log.load(0, |_| true).unwrap_err().to_string();
        assert!(err.contains(&first.display().to_string()) && err.contains("checksum"), "{err}");
        assert!(err.contains("move it aside"), "{err}");
        assert_eq!(std::fs::read(&first).unwrap().len(), last + 1, "the damaged file is left as it was");
    }

    #[test]
    fn trim_deletes_whole_segments_and_what_the_index_counts() {
        let dir = tempfile::tempdir().unwrap();
        for batch in [[rec("pc2", 1, 1000), rec("main-pc", 1, 1500)], [rec("pc2", 2, 5000), rec("pc2", 3, 6000)]] {
            let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
            append(&log, &batch);
        }
        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        load(&log, 0);
        assert_eq!(log.host_reports("pc2", 0, 0).unwrap().count, 3);
        assert_eq!(log.trim(2000).unwrap(), 2, "the first segment, pc2's and main-pc's report");
        assert_eq!(segments(dir.path()).len(), 1);
        let pc2 = log.host_reports("pc2", 0, 10).unwrap();
        assert_eq!((pc2.count, pc2.oldest_ms), (2, 5000));
        assert_eq!(pc2.newest, [(1, 2, 5000), (1, 3, 6000)]);
        assert_eq!(log.host_reports("main-pc", 0, 10).unwrap(), HostReports::default());
        assert_eq!(log.trim(5500).unwrap(), 0, "a segment goes only once all of it is old");
        assert_eq!(log.held(), 2);
    }

    #[test]
    fn the_newest_reports_are_read_from_the_newest_segments() {
        let dir = tempfile::tempdir().unwrap();
        // The last commit carries a report taken long before: resent after an outage.
        let batches = [
            vec![rec("pc2", 1, 5000), rec("pc2", 2, 6000)],
            vec![rec("pc2", 3, 7000)],
            vec![rec("pc2", 9, 1000), rec("pc2", 4, 8000)],
        ];
        for batch in &batches {
            let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
            append(&log, batch);
        }
        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        load(&log, 0);
        let seqs = |limit| -> Result<Vec<u64>, LogError> {
            Ok(log.host_reports("pc2", 0, limit)?.newest.iter().map(|r| r.1).collect())
        };
        assert_eq!(seqs(10).unwrap(), [9, 1, 2, 3, 4], "oldest first, by the time they were taken");
        assert_eq!(seqs(3).unwrap(), [2, 3, 4], "the resent report is older than the first segment's");

        // The newest two are in the last two segments: the first is not read at all.
        let first = segments(dir.path())[0].clone();
        let mut bytes = std::fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        assert_eq!(seqs(2).unwrap(), [3, 4]);
        let err = seqs(3).unwrap_err().to_string();
        assert!(err.contains(&first.display().to_string()) && err.contains("checksum"), "{err}");
    }

    #[test]
    fn segments_roll_at_their_size_and_a_large_commit_spans_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        log.segment_bytes = 1 << 20;
        // Three reports of 3 MiB: more than one frame's payload.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let big: Vec<_> = (1..=3).map(|seq| ("pc2".to_string(), seq, seq as i64, noise(3 << 20))).collect();
        append(&log, &big);
        append(&log, &[rec("pc2", 4, 4)]);
        assert_eq!(segments(dir.path()).len(), 2, "the second commit found the first segment full");
        let found = log.host_reports("pc2", 0, 2).unwrap();
        assert_eq!((found.count, found.newest.iter().map(|r| r.1).collect::<Vec<_>>()), (4, vec![3, 4]));
        drop(log);
        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        let (got, damage) = load(&log, 0);
        assert_eq!(damage, None);
        assert_eq!(got[..3], big[..]);
        assert_eq!(got[3].1, 4);
    }

    #[test]
    fn reports_older_than_the_window_are_not_loaded_and_their_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
            append(&log, &[rec("pc2", 1, 1000)]);
        }
        {
            let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
            append(&log, &[rec("pc2", 2, 2000), rec("pc2", 3, 3000)]);
        }
        let log = ReportLog::open(dir.path().into(), HOUR).unwrap();
        let (got, _) = load(&log, 2500);
        assert_eq!(got, [rec("pc2", 3, 3000)]);
        assert_eq!(segments(dir.path()).len(), 1, "the segment with nothing in the window is deleted");
        assert_eq!(log.host_reports("pc2", 0, 0).unwrap().count, 1);
    }
}

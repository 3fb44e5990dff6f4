//! Captured output of one service: every line of stdout and stderr (and the agent's own notes
//! about the service) with a timestamp, appended to `data_dir/logs/<service>.log`, rotated by
//! size into `<service>.log.1` … `.N`. Files are appended to across agent restarts.
//!
//! Readers get the newest lines from the files and follow new ones through a broadcast
//! channel fed by the writer, so following is unaffected by rotation. The line format on disk
//! is `<RFC 3339 time> <stream> <text>`, one line each, readable with `tail -f` as well.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleet_proto::v1::LogLine;
use tokio::sync::broadcast;

/// Longest line kept; longer lines are cut.
pub const MAX_LINE: usize = 16 * 1024;
/// Most lines a reader may ask for.
pub const MAX_TAIL: usize = 10_000;
/// Lines buffered for each follower before it is told it fell behind.
const FOLLOW_BUFFER: usize = 4096;

/// One service's log files.
#[derive(Debug)]
pub struct LogFile {
    service: String,
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    size: u64,
    /// Lines for followers; made by the first follower and dropped once none is left (a
    /// channel's buffer is allocated up front: [`FOLLOW_BUFFER`] lines for every service).
    live: Option<broadcast::Sender<LogLine>>,
}

/// Cuts `text` to at most [`MAX_LINE`] bytes on a character boundary.
fn bounded(text: &str) -> &str {
    if text.len() <= MAX_LINE {
        return text;
    }
    let mut end = MAX_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Parses one line of a log file.
fn parse(service: &str, line: &str) -> LogLine {
    let mut parts = line.splitn(3, ' ');
    let ts = parts.next().unwrap_or("");
    let stream = parts.next().unwrap_or("");
    let text = parts.next().unwrap_or("");
    let timestamp_ms = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0);
    LogLine {
        service: service.to_string(),
        timestamp_ms,
        stream: stream.to_string(),
        line: text.to_string(),
        host: String::new(),
    }
}

impl LogFile {
    /// Opens (appending) the log of `service` under `dir`.
    pub fn open(dir: &Path, service: &str, max_bytes: u64, backups: u32) -> io::Result<Arc<LogFile>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{service}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Arc::new(LogFile {
            service: service.to_string(),
            path,
            max_bytes,
            backups,
            inner: Mutex::new(Inner { file: Some(file), size, live: None }),
        }))
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn backup(&self, i: u32) -> PathBuf {
        PathBuf::from(format!("{}.{i}", self.path.display()))
    }

    fn rotate(&self, inner: &mut Inner) -> io::Result<()> {
        inner.file = None;
        if self.backups == 0 {
            std::fs::remove_file(&self.path)
                .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
        } else {
            let _ = std::fs::remove_file(self.backup(self.backups));
            for i in (1..self.backups).rev() {
                let from = self.backup(i);
                if from.exists() {
                    std::fs::rename(&from, self.backup(i + 1))?;
                }
            }
            std::fs::rename(&self.path, self.backup(1))?;
        }
        inner.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        inner.size = 0;
        Ok(())
    }

    /// Appends one line of `stream` ("stdout", "stderr", "fleet").
    pub fn write(&self, stream: &str, text: &str) {
        let now = fleet_common::now_ms();
        let text = text.trim_end_matches(['\n', '\r']);
        // One entry is one line of the file: a line break inside (a note quoting a multi-line
        // command) is written as the two characters \n.
        let escaped;
        let text = if text.contains('\n') {
            escaped = text.replace('\n', "\\n");
            bounded(&escaped)
        } else {
            bounded(text)
        };
        let line = format!("{} {stream} {text}\n", fleet_common::rfc3339(now));
        let mut inner = self.inner.lock().expect("log lock");
        if inner.size > 0 && inner.size + line.len() as u64 > self.max_bytes {
            if let Err(e) = self.rotate(&mut inner) {
                tracing::warn!(service = %self.service, error = %e, "cannot rotate the service log");
            }
        }
        let written = match inner.file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => Err(io::Error::other("the log file is not open")),
        };
        match written {
            Ok(()) => inner.size += line.len() as u64,
            Err(e) => tracing::warn!(service = %self.service, error = %e, "cannot write the service log"),
        }
        // Followers see the line once it is in the file.
        if inner.live.as_ref().is_some_and(|l| l.receiver_count() == 0) {
            inner.live = None;
        }
        if let Some(live) = &inner.live {
            let _ = live.send(LogLine {
                service: self.service.clone(),
                timestamp_ms: now,
                stream: stream.to_string(),
                line: text.to_string(),
                host: String::new(),
            });
        }
    }

    fn tail_locked(&self, n: usize) -> Vec<LogLine> {
        let n = n.min(MAX_TAIL);
        let mut out: Vec<String> = Vec::new();
        let mut files = vec![self.path.clone()];
        files.extend((1..=self.backups).map(|i| self.backup(i)));
        for f in files {
            if out.len() >= n {
                break;
            }
            match fleet_common::last_lines(&f, n - out.len()) {
                Ok(mut lines) => {
                    lines.append(&mut out);
                    out = lines;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "cannot read a service log");
                    break;
                }
            }
        }
        out.iter().map(|l| parse(&self.service, l)).collect()
    }

    /// The newest `n` lines (at most [`MAX_TAIL`]), oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let _guard = self.inner.lock().expect("log lock");
        self.tail_locked(n)
    }

    /// The newest `n` lines and a receiver of every line written after them: taken under the
    /// writer's lock, so nothing is missed or repeated between the two.
    pub fn follow(&self, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let mut inner = self.inner.lock().expect("log lock");
        let rx = inner.live.get_or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0).subscribe();
        (self.tail_locked(n), rx)
    }

    /// The newest `n` lines the service itself wrote, as "stream: text", for failure messages.
    pub fn output_tail(&self, n: usize) -> Vec<String> {
        self.output_since(i64::MIN, n)
    }

    /// Like [`LogFile::output_tail`], only lines written at or after `since_ms`: what one
    /// release wrote, not the release before it.
    pub fn output_since(&self, since_ms: i64, n: usize) -> Vec<String> {
        let lines = self.tail(n * 4);
        let mut out: Vec<String> = lines
            .into_iter()
            .filter(|l| l.stream != "fleet" && l.timestamp_ms >= since_ms)
            .map(|l| format!("{}: {}", l.stream, l.line))
            .collect();
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_backups() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path(), "api", 200, 2).unwrap();
        for i in 0..30 {
            log.write("stdout", &format!("line {i:02}"));
        }
        let path = dir.path().join("api.log");
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(dir.path().join("api.log.1").exists() && dir.path().join("api.log.2").exists());
        assert!(!dir.path().join("api.log.3").exists(), "only log_backups files are kept");
        // The tail spans the rotated files, in order.
        let tail: Vec<String> = log.tail(8).into_iter().map(|l| l.line).collect();
        assert_eq!(tail, (22..30).map(|i| format!("line {i:02}")).collect::<Vec<_>>());
    }

    #[test]
    fn lines_survive_a_reopen_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogFile::open(dir.path(), "api", 1 << 20, 5).unwrap();
            log.write("stderr", "boom: disk full\n");
        }
        let log = LogFile::open(dir.path(), "api", 1 << 20, 5).unwrap();
        log.write("stdout", "second run");
        let t = log.tail(10);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].stream.as_str(), t[0].line.as_str()), ("stderr", "boom: disk full"));
        assert!(t[0].timestamp_ms > 0);
        assert_eq!(log.output_tail(1), ["stdout: second run"]);
    }

    #[test]
    fn a_note_with_line_breaks_stays_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path(), "backup", 1 << 20, 1).unwrap();
        log.write("fleet", "started: /bin/sh -c set -eu\necho hi\n");
        log.write("stdout", "hi");
        let tail = log.tail(10);
        assert_eq!(tail.len(), 2, "{tail:?}");
        assert_eq!(tail[0].line, "started: /bin/sh -c set -eu\\necho hi");
    }

    #[test]
    fn long_lines_are_cut_and_tails_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path(), "api", 1 << 20, 1).unwrap();
        log.write("stdout", &"é".repeat(MAX_LINE));
        assert!(log.tail(1)[0].line.len() <= MAX_LINE);
        assert!(log.tail(usize::MAX).len() <= MAX_TAIL);
    }

    #[tokio::test]
    async fn followers_see_new_lines_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path(), "api", 100, 1).unwrap();
        log.write("stdout", "before");
        let (tail, mut rx) = log.follow(5);
        assert_eq!(tail.len(), 1);
        for i in 0..10 {
            log.write("stdout", &format!("after {i}"));
        }
        for i in 0..10 {
            assert_eq!(rx.recv().await.unwrap().line, format!("after {i}"));
        }
        // A second follower sees what comes after it joined; once every follower has left,
        // nothing is buffered for followers, and a new one starts afresh.
        let (_, mut rx2) = log.follow(0);
        log.write("stdout", "both");
        assert_eq!(rx.recv().await.unwrap().line, "both");
        assert_eq!(rx2.recv().await.unwrap().line, "both");
        drop((rx, rx2));
        log.write("stdout", "nobody");
        assert!(log.inner.lock().unwrap().live.is_none(), "no follower, no follow buffer");
        let (tail, mut rx3) = log.follow(1);
        assert_eq!(tail[0].line, "nobody");
        log.write("stdout", "again");
        assert_eq!(rx3.recv().await.unwrap().line, "again");
    }
}

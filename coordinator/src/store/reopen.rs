//! sled behind a handle that is opened again after an I/O error. sled remembers the first
//! I/O error its background flusher meets (a full disk, say) and fails every later operation
//! with it for the life of the process, so a coordinator whose disk filled up once would never
//! save a host record again. Here an operation that fails with an I/O error closes sled
//! (flushing what it can) and opens it again from what is on disk, at most once every
//! [`RETRY`]: once the cause is gone, writes work again within seconds (docs/install.md,
//! "A full disk").

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// The shortest time between two attempts to open sled again.
pub const RETRY: Duration = Duration::from_secs(1);

/// Opens sled at `path` (its settings are the caller's).
pub type Opener = fn(&Path) -> Result<sled::Db, String>;

/// One sled database and its tree, reopened after I/O errors.
pub struct Reopening {
    path: PathBuf,
    tree_name: &'static str,
    open: Opener,
    /// The handles (none while a reopen failed), and how many times they were opened.
    inner: RwLock<(Option<(sled::Db, sled::Tree)>, u64)>,
    last_attempt: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Reopening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Reopening {
    /// Wraps an open database.
    pub fn new(path: &Path, db: sled::Db, tree: sled::Tree, tree_name: &'static str, open: Opener) -> Self {
        Reopening {
            path: path.to_path_buf(),
            tree_name,
            open,
            inner: RwLock::new((Some((db, tree)), 0)),
            last_attempt: Mutex::new(None),
        }
    }

    /// Runs `f` on the database and its tree. An I/O error closes sled and opens it again
    /// (at most every [`RETRY`]), and `f` runs once more on the new handles.
    pub fn with<T>(&self, f: impl Fn(&sled::Db, &sled::Tree) -> sled::Result<T>) -> Result<T, String> {
        let (first, generation) = {
            let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
            (g.0.as_ref().map(|(db, tree)| f(db, tree)), g.1)
        };
        let why = match first {
            Some(Ok(v)) => return Ok(v),
            Some(Err(sled::Error::Io(e))) => e.to_string(),
            Some(Err(e)) => return Err(e.to_string()),
            None => "the store is closed after an earlier I/O error".to_string(),
        };
        self.reopen(generation, &why)?;
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let (db, tree) = g.0.as_ref().ok_or(why)?;
        f(db, tree).map_err(|e| e.to_string())
    }

    /// Opens sled again unless another caller already did since `seen` was read.
    fn reopen(&self, seen: u64, why: &str) -> Result<(), String> {
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < RETRY) {
                return Err(format!("{why} (the store is opened again at most every {}s)", RETRY.as_secs()));
            }
            *last = Some(Instant::now());
        }
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if g.1 != seen && g.0.is_some() {
            return Ok(());
        }
        // Dropping the handles flushes what sled can and stops its threads, releasing its lock.
        g.0 = None;
        let db = (self.open)(&self.path)?;
        let tree = db.open_tree(self.tree_name).map_err(|e| e.to_string())?;
        *g = (Some((db, tree)), g.1 + 1);
        tracing::info!(store = %self.path.display(), "opened the store again after an I/O error ({why})");
        Ok(())
    }
}

//! Unpacking a release archive (.tar.gz) safely (docs/design.md §3): nothing is ever written outside
//! the release directory, whatever the archive says.
//!
//! Refused, with the entry named: absolute paths; `..`; symbolic links whose target is absolute
//! or resolves outside the release; anything written through a symbolic link; hard links to
//! anything but a regular file already unpacked inside the release; device nodes, FIFOs and
//! other special files; more than the size or file-count limit; a corrupt archive. Every entry's
//! write is checked, every file is synced, and on any failure the partial directory is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Bounds on what one archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of all files.
    pub max_bytes: u64,
    /// Number of entries.
    pub max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 2 << 30, max_files: 100_000 }
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnpackError {
    /// The archive itself cannot be read (corrupt gzip or tar).
    #[error("the archive is corrupt: {0}")]
    Corrupt(String),
    /// An entry would write outside the release directory.
    #[error("entry {entry:?} is refused: {reason}")]
    Refused { entry: String, reason: String },
    /// A limit was exceeded.
    #[error("the archive exceeds the {what} limit of {limit}")]
    TooBig { what: &'static str, limit: String },
    /// Writing failed.
    #[error("cannot write {path}: {reason}")]
    Io { path: String, reason: String },
}

fn refused(entry: &Path, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused { entry: entry.display().to_string(), reason: reason.into() }
}

fn io_err(path: &Path, e: io::Error) -> UnpackError {
    UnpackError::Io { path: path.display().to_string(), reason: fleet_common::io_reason(&e) }
}

/// The entry path as a clean relative path, or why it is refused.
fn clean(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("the path contains `..`".into()),
            Component::RootDir | Component::Prefix(_) => return Err("the path is absolute".into()),
        }
    }
    Ok(out)
}

/// Lexically resolves `target` (relative to the directory `base`, both inside the release)
/// and returns it if it stays inside.
fn resolve_inside(base: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut parts: Vec<std::ffi::OsString> = base.components().map(|c| c.as_os_str().to_os_string()).collect();
    for c in target.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Fails if any existing component of `rel` below `root` is a symbolic link: writing through
/// one could land anywhere.
fn no_symlink_on_the_way(root: &Path, rel: &Path, entry: &Path) -> Result<(), UnpackError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused(entry, "it would be written through a symbolic link"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&cur, e)),
        }
    }
    Ok(())
}

fn mkdirs(root: &Path, rel: &Path, entry: &Path) -> Result<(), UnpackError> {
    no_symlink_on_the_way(root, rel, entry)?;
    let p = root.join(rel);
    fs::create_dir_all(&p).map_err(|e| io_err(&p, e))
}

/// Unpacks the gzip-compressed tar `archive` into `dest`, which must not exist. On failure,
/// `dest` is removed.
pub fn unpack(archive: &Path, dest: &Path, limits: Limits) -> Result<u64, UnpackError> {
    let result = unpack_inner(archive, dest, limits);
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(archive: &Path, dest: &Path, limits: Limits) -> Result<u64, UnpackError> {
    let file = File::open(archive).map_err(|e| io_err(archive, e))?;
    fs::create_dir(dest).map_err(|e| io_err(dest, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let entries = tar.entries().map_err(|e| UnpackError::Corrupt(e.to_string()))?;
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        files += 1;
        if files > limits.max_files {
            return Err(UnpackError::TooBig { what: "file count", limit: limits.max_files.to_string() });
        }
        let raw = entry.path().map_err(|e| UnpackError::Corrupt(e.to_string()))?.into_owned();
        let rel = clean(&raw).map_err(|r| refused(&raw, r))?;
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            // The archive's own root ("./"): nothing to create.
            if kind.is_dir() {
                continue;
            }
            return Err(refused(&raw, "the entry has no name"));
        }
        let target = dest.join(&rel);
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        match kind {
            tar::EntryType::Directory => mkdirs(dest, &rel, &raw)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(|e| UnpackError::Corrupt(e.to_string()))?;
                bytes = bytes.saturating_add(size);
                if bytes > limits.max_bytes {
                    return Err(UnpackError::TooBig {
                        what: "size",
                        limit: fleet_common::human_bytes(limits.max_bytes),
                    });
                }
                mkdirs(dest, parent_rel, &raw)?;
                no_symlink_on_the_way(dest, &rel, &raw)?;
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&target)
                    .map_err(|e| io_err(&target, e))?;
                // Copy no more than the header promised, even if the stream says otherwise.
                let copied = io::copy(&mut (&mut entry).take(size), &mut out).map_err(|e| match e.kind() {
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => {
                        UnpackError::Corrupt(e.to_string())
                    }
                    _ => io_err(&target, e),
                })?;
                if copied != size {
                    return Err(UnpackError::Corrupt(format!("{} is cut short", raw.display())));
                }
                out.flush().map_err(|e| io_err(&target, e))?;
                // No setuid, setgid or sticky bits from an archive.
                out.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| io_err(&target, e))?;
                out.sync_all().map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| refused(&raw, "a symbolic link without a target"))?
                    .into_owned();
                if resolve_inside(parent_rel, &link).is_none() {
                    return Err(refused(
                        &raw,
                        format!("its link target {} leaves the release directory", link.display()),
                    ));
                }
                mkdirs(dest, parent_rel, &raw)?;
                no_symlink_on_the_way(dest, &rel, &raw)?;
                std::os::unix::fs::symlink(&link, &target).map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| refused(&raw, "a hard link without a target"))?
                    .into_owned();
                let link_rel = clean(&link).map_err(|r| refused(&raw, format!("its hard link target: {r}")))?;
                let source = dest.join(&link_rel);
                no_symlink_on_the_way(dest, &link_rel, &raw)?;
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => {
                        return Err(refused(
                            &raw,
                            format!("its hard link target {} is not a file unpacked from this archive", link.display()),
                        ));
                    }
                }
                mkdirs(dest, parent_rel, &raw)?;
                no_symlink_on_the_way(dest, &rel, &raw)?;
                fs::hard_link(&source, &target).map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {
                // Metadata the tar reader already applied to the next entry.
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(refused(&raw, "device nodes are not allowed")),
            tar::EntryType::Fifo => return Err(refused(&raw, "FIFOs are not allowed")),
            other => return Err(refused(&raw, format!("entries of type {other:?} are not allowed"))),
        }
    }
    sync_dir(dest)?;
    Ok(bytes)
}

/// fsyncs a directory (so renames and new entries in it are durable).
pub fn sync_dir(dir: &Path) -> Result<(), UnpackError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Builds a .tar.gz from raw headers, including the malicious kinds `tar::Builder` refuses.
    pub fn archive(path: &Path, entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) {
        let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            // Write the name bytes directly: set_path refuses `..` and absolute paths.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                let lb = l.as_bytes();
                h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    fn try_unpack(
        entries: &[(&str, tar::EntryType, &[u8], Option<&str>)],
        limits: Limits,
    ) -> (tempfile::TempDir, Result<u64, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar.gz");
        archive(&a, entries);
        let r = unpack(&a, &dir.path().join("release"), limits);
        (dir, r)
    }

    /// Everything in `dir` except the archive and the release directory: what an attack
    /// would have written outside.
    fn outside(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "a.tar.gz" && n != "release")
            .collect();
        v.sort();
        v
    }

    use tar::EntryType as T;

    #[test]
    fn a_good_archive_unpacks_with_links_inside() {
        let (dir, r) = try_unpack(
            &[
                ("bin/", T::Directory, b"", None),
                ("bin/app", T::Regular, b"#!/bin/sh\necho hi\n", None),
                ("bin/app-link", T::Symlink, b"", Some("app")),
                ("current-app", T::Symlink, b"", Some("bin/app")),
                ("bin/hard", T::Link, b"", Some("bin/app")),
            ],
            Limits::default(),
        );
        assert_eq!(r, Ok(18));
        let rel = dir.path().join("release");
        assert_eq!(fs::read_to_string(rel.join("bin/hard")).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(fs::read_link(rel.join("bin/app-link")).unwrap(), Path::new("app"));
        assert_eq!(fs::metadata(rel.join("bin/app")).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn malicious_archives_are_refused_and_write_nothing_outside() {
        type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);
        let cases: Vec<(&str, Vec<Entry<'_>>, &str)> = vec![
            ("absolute path", vec![("/tmp/evil", T::Regular, b"x", None)], "the path is absolute"),
            ("parent path", vec![("../evil", T::Regular, b"x", None)], "the path contains `..`"),
            ("nested parent", vec![("a/../../evil", T::Regular, b"x", None)], "the path contains `..`"),
            (
                "symlink out, then a file through it",
                vec![("escape", T::Symlink, b"", Some("..")), ("escape/evil", T::Regular, b"x", None)],
                "leaves the release directory",
            ),
            ("absolute symlink", vec![("etc", T::Symlink, b"", Some("/etc"))], "leaves the release directory"),
            (
                "file through an inside symlink",
                vec![
                    ("d/", T::Directory, b"", None),
                    ("l", T::Symlink, b"", Some("d")),
                    ("l/x", T::Regular, b"x", None),
                ],
                "written through a symbolic link",
            ),
            ("hard link out", vec![("h", T::Link, b"", Some("../a.tar.gz"))], "the path contains `..`"),
            ("hard link to a missing file", vec![("h", T::Link, b"", Some("nothing"))], "is not a file unpacked"),
            ("device node", vec![("dev", T::Char, b"", None)], "device nodes are not allowed"),
            ("block device", vec![("blk", T::Block, b"", None)], "device nodes are not allowed"),
            ("fifo", vec![("pipe", T::Fifo, b"", None)], "FIFOs are not allowed"),
        ];
        for (what, entries, want) in cases {
            let (dir, r) = try_unpack(&entries, Limits::default());
            let err = r.expect_err(what).to_string();
            assert!(err.contains(want), "{what}: {err}");
            assert!(outside(dir.path()).is_empty(), "{what} wrote {:?}", outside(dir.path()));
            assert!(!dir.path().join("release").exists(), "{what}: the partial release must be removed");
        }
    }

    #[test]
    fn limits_and_corruption_are_refused() {
        let (_d, r) = try_unpack(&[("big", T::Regular, &[0u8; 2048], None)], Limits { max_bytes: 1024, max_files: 10 });
        assert!(matches!(r, Err(UnpackError::TooBig { what: "size", .. })), "{r:?}");
        let many: Vec<(String, tar::EntryType, &[u8], Option<&str>)> =
            (0..20).map(|i| (format!("f{i}"), T::Regular, &b"x"[..], None)).collect();
        let many: Vec<(&str, tar::EntryType, &[u8], Option<&str>)> =
            many.iter().map(|(n, t, d, l)| (n.as_str(), *t, *d, *l)).collect();
        let (_d, r) = try_unpack(&many, Limits { max_bytes: 1 << 20, max_files: 10 });
        assert!(matches!(r, Err(UnpackError::TooBig { what: "file count", .. })), "{r:?}");

        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar.gz");
        archive(&a, &[("f", T::Regular, &[7u8; 4096], None)]);
        let mut bytes = fs::read(&a).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        bytes.truncate(bytes.len() - 8);
        fs::write(&a, bytes).unwrap();
        let r = unpack(&a, &dir.path().join("release"), Limits::default());
        assert!(matches!(r, Err(UnpackError::Corrupt(_))), "{r:?}");
        assert!(!dir.path().join("release").exists());
    }
}

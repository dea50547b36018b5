//! What may be in an app bundle (pure): every tar entry is judged by its header alone before
//! a byte of it is stored, and the whole bundle against the size and file limits.

use std::collections::BTreeSet;

/// Why a bundle is refused. Each names the entry at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("entry {entry:?}: absolute paths are not allowed")]
    Absolute { entry: String },
    #[error("entry {entry:?}: '..' would leave the bundle")]
    ParentDir { entry: String },
    #[error("entry {entry:?}: symlinks are not allowed")]
    Symlink { entry: String },
    #[error("entry {entry:?}: hard links are not allowed")]
    HardLink { entry: String },
    #[error("entry {entry:?}: {kind} entries are not allowed (only files and directories)")]
    Special { entry: String, kind: String },
    #[error("entry {entry:?}: path is not valid UTF-8 or has a control character or backslash")]
    BadName { entry: String },
    #[error("entry {entry:?}: appears twice")]
    Duplicate { entry: String },
    #[error("entry {entry:?}: the bundle is over the limit of {limit} bytes")]
    TooLarge { entry: String, limit: u64 },
    #[error("entry {entry:?}: the bundle has more than {limit} files")]
    TooManyFiles { entry: String, limit: u32 },
    #[error("the upload is over the limit of {limit} bytes")]
    UploadTooLarge { limit: u64 },
    #[error("kube.app.json: {reason}")]
    AppJson { reason: String },
    #[error("not a gzip-compressed tar archive: {reason}")]
    Archive { reason: String },
    #[error("the bundle has no files")]
    Empty,
}

/// The kind of a tar entry, as far as bundles care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    HardLink,
    /// Metadata a tar writer may add (pax global headers): ignored.
    Metadata,
    Other(&'static str),
}

impl EntryKind {
    pub fn from_tar(t: tar::EntryType) -> EntryKind {
        use tar::EntryType as T;
        match t {
            T::Regular | T::Continuous => EntryKind::File,
            T::Directory => EntryKind::Directory,
            T::Symlink => EntryKind::Symlink,
            T::Link => EntryKind::HardLink,
            T::XGlobalHeader => EntryKind::Metadata,
            T::Char => EntryKind::Other("character device"),
            T::Block => EntryKind::Other("block device"),
            T::Fifo => EntryKind::Other("fifo"),
            _ => EntryKind::Other("special"),
        }
    }
}

/// Limits a bundle is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_files: u32,
}

/// Running judgement over the entries of one bundle.
#[derive(Debug)]
pub struct Checker {
    limits: Limits,
    seen: BTreeSet<String>,
    bytes: u64,
}

impl Checker {
    pub fn new(limits: Limits) -> Checker {
        Checker {
            limits,
            seen: BTreeSet::new(),
            bytes: 0,
        }
    }

    /// Judges one entry: `Ok(Some(path))` for a file to store under the clean relative
    /// path, `Ok(None)` for an entry to skip (directories, metadata).
    pub fn entry(
        &mut self,
        raw_path: &[u8],
        kind: EntryKind,
        size: u64,
    ) -> Result<Option<String>, BundleError> {
        let shown = String::from_utf8_lossy(raw_path).into_owned();
        let entry = || shown.clone();
        match kind {
            EntryKind::Symlink => return Err(BundleError::Symlink { entry: entry() }),
            EntryKind::HardLink => return Err(BundleError::HardLink { entry: entry() }),
            EntryKind::Other(kind) => {
                return Err(BundleError::Special {
                    entry: entry(),
                    kind: kind.into(),
                });
            }
            EntryKind::Metadata => return Ok(None),
            EntryKind::File | EntryKind::Directory => {}
        }
        let path = clean_path(raw_path).map_err(|e| e.with_entry(entry()))?;
        if kind == EntryKind::Directory || path.is_empty() {
            return Ok(None);
        }
        if !self.seen.insert(path.clone()) {
            return Err(BundleError::Duplicate { entry: path });
        }
        if self.seen.len() as u64 > u64::from(self.limits.max_files) {
            return Err(BundleError::TooManyFiles {
                entry: path,
                limit: self.limits.max_files,
            });
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_bytes {
            return Err(BundleError::TooLarge {
                entry: path,
                limit: self.limits.max_bytes,
            });
        }
        Ok(Some(path))
    }

    /// The bundle as a whole, once every entry passed.
    pub fn finish(&self) -> Result<(), BundleError> {
        if self.seen.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(())
    }
}

/// A relative path with `.` and empty components removed; refuses `..`, absolute paths,
/// backslashes and control characters.
fn clean_path(raw: &[u8]) -> Result<String, BundleError> {
    let bad = || BundleError::BadName {
        entry: String::new(),
    };
    let s = std::str::from_utf8(raw).map_err(|_| bad())?;
    if s.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad());
    }
    if s.starts_with('/') {
        return Err(BundleError::Absolute {
            entry: String::new(),
        });
    }
    let mut parts = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(BundleError::ParentDir {
                    entry: String::new(),
                });
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

impl BundleError {
    fn with_entry(self, e: String) -> BundleError {
        match self {
            BundleError::BadName { .. } => BundleError::BadName { entry: e },
            BundleError::Absolute { .. } => BundleError::Absolute { entry: e },
            BundleError::ParentDir { .. } => BundleError::ParentDir { entry: e },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        Checker::new(Limits {
            max_bytes: 100,
            max_files: 3,
        })
    }

    #[test]
    fn clean_paths_pass() {
        let mut c = checker();
        assert_eq!(
            c.entry(b"./index.html", EntryKind::File, 10),
            Ok(Some("index.html".into()))
        );
        assert_eq!(
            c.entry(b"a//b/./c.js", EntryKind::File, 10),
            Ok(Some("a/b/c.js".into()))
        );
        assert_eq!(c.entry(b"a/", EntryKind::Directory, 0), Ok(None));
        assert_eq!(c.entry(b"", EntryKind::Metadata, 0), Ok(None));
        assert!(c.finish().is_ok());
    }

    #[test]
    fn escapes_and_links_are_refused_by_name() {
        let mut c = checker();
        let e = c
            .entry(b"a/../../etc/passwd", EntryKind::File, 1)
            .unwrap_err();
        assert_eq!(
            e,
            BundleError::ParentDir {
                entry: "a/../../etc/passwd".into()
            }
        );
        assert!(e.to_string().contains("a/../../etc/passwd"));
        assert!(matches!(
            c.entry(b"/etc/passwd", EntryKind::File, 1),
            Err(BundleError::Absolute { .. })
        ));
        assert!(matches!(
            c.entry(b"link", EntryKind::Symlink, 0),
            Err(BundleError::Symlink { .. })
        ));
        assert!(matches!(
            c.entry(b"hard", EntryKind::HardLink, 0),
            Err(BundleError::HardLink { .. })
        ));
        assert!(matches!(
            c.entry(b"dev", EntryKind::Other("character device"), 0),
            Err(BundleError::Special { .. })
        ));
        assert!(matches!(
            c.entry(b"a\\b", EntryKind::File, 0),
            Err(BundleError::BadName { .. })
        ));
        assert!(matches!(
            c.entry(b"\xff", EntryKind::File, 0),
            Err(BundleError::BadName { .. })
        ));
        assert!(matches!(
            c.entry(b"..", EntryKind::Directory, 0),
            Err(BundleError::ParentDir { .. })
        ));
    }

    #[test]
    fn limits_and_duplicates() {
        let mut c = checker();
        c.entry(b"a", EntryKind::File, 60).unwrap();
        assert!(matches!(
            c.entry(b"./a", EntryKind::File, 1),
            Err(BundleError::Duplicate { .. })
        ));
        assert!(matches!(
            c.entry(b"b", EntryKind::File, 41),
            Err(BundleError::TooLarge { .. })
        ));
        let mut c = checker();
        for n in [b"1", b"2", b"3"] {
            c.entry(n, EntryKind::File, 1).unwrap();
        }
        assert!(matches!(
            c.entry(b"4", EntryKind::File, 1),
            Err(BundleError::TooManyFiles { .. })
        ));
        assert_eq!(checker().finish(), Err(BundleError::Empty));
    }
}

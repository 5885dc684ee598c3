//! Typed errors of the nvtier library.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config {file}: {msg}")]
    Config { file: PathBuf, msg: String },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("tier {tier} directory {path}: {msg}")]
    Tier {
        tier: &'static str,
        path: PathBuf,
        msg: String,
    },

    #[error("layer tar rejected: {0}")]
    Hostile(String),

    #[error("layer stream is corrupt or truncated: {0}")]
    Corrupt(String),

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },

    /// A tier's filesystem ran out of space (`ENOSPC`). `detail` is the
    /// failed operation, its path and the OS error, said once.
    #[error("the {tier} tier at {path} is full: {detail}; free space on the {tier} tier at {path}, or raise its size")]
    TierFull {
        tier: &'static str,
        path: PathBuf,
        detail: String,
    },

    /// An image whose content a tier lost (or a missing tier holds).
    #[error("image {image} is damaged: {what}; run `nvtier repair {image}` (or pull it again) to restore it")]
    Damaged { image: String, what: String },

    #[error("pmem budget exhausted: {0}")]
    BudgetExhausted(String),

    #[error("registry: {0}")]
    Registry(String),

    /// The registry refused the pull's credentials, or wants some.
    #[error("registry {registry} refused access to {image}: {msg}")]
    RegistryAuth {
        registry: String,
        image: String,
        msg: String,
    },

    #[error("image {0} not found in the store (run `nvtier images` to list)")]
    ImageNotFound(String),

    #[error("invalid image reference {reference:?}: {msg}")]
    BadReference { reference: String, msg: String },

    #[error(transparent)]
    Xattr(XattrError),

    #[error("mount {target}: {msg}")]
    Mount { target: PathBuf, msg: String },

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The errno of a failed system call, if this error is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Xattr(x) => x.errno(),
            _ => None,
        }
    }

    /// The path a failed system call was made on, if this error is one.
    pub fn io_path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. } => Some(path),
            Error::Xattr(x) => Some(&x.path),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path and a description to an I/O error.
pub trait IoContext<T> {
    fn ctx(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            what,
            path: path.into(),
            source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            what,
            path: path.into(),
            source: std::io::Error::from(e),
        })
    }
}

/// The xattr call that failed (see `crate::fsutil::xattr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrOp {
    List,
    Get,
    Set,
}

impl std::fmt::Display for XattrOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XattrOp::List => "list xattrs of",
            XattrOp::Get => "read xattr",
            XattrOp::Set => "set xattr",
        })
    }
}

/// A failed xattr call.
#[derive(Debug, thiserror::Error)]
#[error("{op}{} {}: {source}", name.as_ref().map(|n| format!(" {:?} of", n)).unwrap_or_default(), path.display())]
pub struct XattrError {
    pub op: XattrOp,
    pub path: PathBuf,
    /// The attribute (`None` for a listing).
    pub name: Option<OsString>,
    #[source]
    pub source: io::Error,
}

impl XattrError {
    pub(crate) fn new(op: XattrOp, path: &Path, name: Option<&OsStr>, source: io::Error) -> Self {
        XattrError {
            op,
            path: path.to_path_buf(),
            name: name.map(OsStr::to_os_string),
            source,
        }
    }

    /// The errno of the failed call, if it was one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

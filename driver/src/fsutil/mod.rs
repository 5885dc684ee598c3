//! Filesystem helpers shared by every other module: atomic writes, fsync
//! and syncfs, xattrs, inode attributes and tree walks (and one scheduling
//! hint for the threads that do such work).
//!
//! This is the bottom layer of the crate: it uses nothing of the crate but
//! [`crate::error`].

pub mod atomic;
pub mod attr;
pub mod sched;
pub mod sync;
pub mod walk;
pub mod xattr;

pub use atomic::write_atomic;
pub use sync::{fsync_dir, start_writeback, syncfs};

//! The mount system calls behind [`MountOps`], so the bookkeeping around
//! them (records, refcounts, container directories, the detach fallback)
//! can be exercised without root through a test double.

use super::OverlaySpec;
use crate::error::{Error, IoContext, Result};
use std::path::Path;

/// The mount operations the image mount logic needs.
pub trait MountOps {
    /// Mount an overlay described by `spec` at `target`.
    fn mount_overlay(&self, spec: &OverlaySpec, target: &Path) -> Result<()>;
    /// Unmount `target`; lazily (`MNT_DETACH`) when `detach` is set. A
    /// failure is an [`Error::Io`] carrying the errno.
    fn umount(&self, target: &Path, detach: bool) -> Result<()>;
    /// Is `target` a mount point?
    fn is_mounted(&self, target: &Path) -> bool;
}

/// The real system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxMounts;

impl MountOps for LinuxMounts {
    fn mount_overlay(&self, spec: &OverlaySpec, target: &Path) -> Result<()> {
        super::mount_overlay(spec, target)
    }

    fn umount(&self, target: &Path, detach: bool) -> Result<()> {
        let flags = if detach {
            nix::mount::MntFlags::MNT_DETACH
        } else {
            nix::mount::MntFlags::empty()
        };
        nix::mount::umount2(target, flags).ctx("umount", target)
    }

    fn is_mounted(&self, target: &Path) -> bool {
        super::is_mounted(target)
    }
}

/// Did `e` come from a system call that failed with `errno`?
pub(crate) fn is_errno(e: &Error, errno: i32) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(errno))
}

#[cfg(test)]
pub(crate) use double::{Call, Op, RecordingMounts};

#[cfg(test)]
mod double {
    use super::*;
    use std::cell::RefCell;
    use std::collections::{BTreeSet, VecDeque};
    use std::path::PathBuf;

    /// Which operation a call was.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Op {
        Mount,
        Umount,
    }

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Mount { spec: OverlaySpec, target: PathBuf },
        Umount { target: PathBuf, detach: bool },
        IsMounted(PathBuf),
    }

    /// A test double: records every call, keeps a set of mounted targets
    /// and fails calls on request.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingMounts {
        calls: RefCell<Vec<Call>>,
        mounted: RefCell<BTreeSet<PathBuf>>,
        failures: RefCell<VecDeque<(Op, i32)>>,
    }

    impl RecordingMounts {
        /// Make the next call of `op` (after any failures queued earlier
        /// for it) fail with `errno`.
        pub(crate) fn fail_next(&self, op: Op, errno: i32) {
            self.failures.borrow_mut().push_back((op, errno));
        }

        /// Pretend `target` is mounted (or not), as after a reboot.
        pub(crate) fn set_mounted(&self, target: &Path, on: bool) {
            let mut m = self.mounted.borrow_mut();
            if on {
                m.insert(target.to_path_buf());
            } else {
                m.remove(target);
            }
        }

        /// The calls so far, oldest first.
        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }

        /// The calls so far, without `is_mounted` queries.
        pub(crate) fn changes(&self) -> Vec<Call> {
            self.calls()
                .into_iter()
                .filter(|c| !matches!(c, Call::IsMounted(_)))
                .collect()
        }

        fn take_failure(&self, op: Op) -> Option<std::io::Error> {
            let mut f = self.failures.borrow_mut();
            let i = f.iter().position(|(o, _)| *o == op)?;
            let (_, errno) = f.remove(i)?;
            Some(std::io::Error::from_raw_os_error(errno))
        }
    }

    impl MountOps for RecordingMounts {
        fn mount_overlay(&self, spec: &OverlaySpec, target: &Path) -> Result<()> {
            self.calls.borrow_mut().push(Call::Mount {
                spec: spec.clone(),
                target: target.to_path_buf(),
            });
            if let Some(e) = self.take_failure(Op::Mount) {
                return Err(Error::Mount {
                    target: target.into(),
                    msg: format!("move_mount: {e}"),
                });
            }
            self.mounted.borrow_mut().insert(target.to_path_buf());
            Ok(())
        }

        fn umount(&self, target: &Path, detach: bool) -> Result<()> {
            self.calls.borrow_mut().push(Call::Umount {
                target: target.to_path_buf(),
                detach,
            });
            if let Some(e) = self.take_failure(Op::Umount) {
                return Err(e).ctx("umount", target);
            }
            if !self.mounted.borrow_mut().remove(target) {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL)).ctx("umount", target);
            }
            Ok(())
        }

        fn is_mounted(&self, target: &Path) -> bool {
            self.calls
                .borrow_mut()
                .push(Call::IsMounted(target.to_path_buf()));
            self.mounted.borrow().contains(target)
        }
    }
}

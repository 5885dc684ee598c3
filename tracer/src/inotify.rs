//! The last-resort tracer: inotify watches on every directory of the
//! container's merged root filesystem (IN_OPEN). It sees opens (execs
//! included, without telling them apart), not mmaps of open files or
//! stat-only lookups. Adding the watches walks the image's directories
//! before the run, which warms the dentry cache.

use crate::collector::Collector;
use crate::event::{monotonic_ns, Kind, RawEvent};
use crate::{Error, Result, Tracer};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::path::Path;

pub struct InotifyTracer {
    collector: Collector,
    pub watches: usize,
}

const SKIP: &[&str] = &["proc", "sys", "dev"];

impl InotifyTracer {
    pub fn start(root: &Path) -> Result<InotifyTracer> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| Error::FanotifyUnavailable(format!("inotify_init: {e}")))?;
        let mut dirs: HashMap<WatchDescriptor, String> = HashMap::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let full = root.join(&rel);
            match ino.add_watch(&full, AddWatchFlags::IN_OPEN | AddWatchFlags::IN_ONLYDIR) {
                Ok(wd) => {
                    dirs.insert(wd, rel.clone());
                }
                Err(e) => {
                    return Err(Error::FanotifyUnavailable(format!(
                        "inotify_add_watch {}: {e} (raise fs.inotify.max_user_watches?)",
                        full.display()
                    )))
                }
            }
            let Ok(rd) = std::fs::read_dir(&full) else {
                continue;
            };
            for e in rd.flatten() {
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let name = e.file_name().to_string_lossy().into_owned();
                if is_dir && !(rel.is_empty() && SKIP.contains(&name.as_str())) {
                    stack.push(if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    });
                }
            }
        }
        let watches = dirs.len();
        let collector = Collector::spawn("nvtier-inotify", ino, move |ino: &Inotify| {
            decode(ino.read_events().unwrap_or_default(), &dirs)
        })?;
        Ok(InotifyTracer { collector, watches })
    }
}

fn decode(
    batch: Vec<nix::sys::inotify::InotifyEvent>,
    dirs: &HashMap<WatchDescriptor, String>,
) -> Vec<RawEvent> {
    let mut out = Vec::new();
    for ev in batch {
        if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
            continue;
        }
        let (Some(dir), Some(name)) = (dirs.get(&ev.wd), ev.name) else {
            continue;
        };
        let path = if dir.is_empty() {
            format!("/{}", name.to_string_lossy())
        } else {
            format!("/{dir}/{}", name.to_string_lossy())
        };
        out.push(RawEvent::ImagePath {
            kind: Kind::Open,
            ts_ns: monotonic_ns(),
            path,
        });
    }
    out
}

impl Tracer for InotifyTracer {
    fn stop(self: Box<Self>) -> Result<(Vec<RawEvent>, u64)> {
        Ok((self.collector.finish()?, 0))
    }
    fn name(&self) -> &'static str {
        "inotify"
    }
}

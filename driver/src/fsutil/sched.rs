//! CPU scheduling hints for the calling thread.

/// Run the calling thread `steps` nice levels below its current priority
/// (at most nice 19). Linux keeps a nice value per thread, so only this
/// thread changes. Advisory: an error leaves the thread as it was.
pub fn lower_thread_priority(steps: i32) {
    if steps <= 0 {
        return;
    }
    let (Some(tid), Some(now)) = (thread_id(), thread_nice()) else {
        return;
    };
    let target = now.saturating_add(steps).min(19);
    // SAFETY: setpriority only reads its integer arguments; an error is
    // reported through the return value (ignored: the call is advisory).
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) };
}

/// The calling thread's nice value.
pub fn thread_nice() -> Option<i32> {
    let tid = thread_id()?;
    nix::errno::Errno::clear();
    // SAFETY: getpriority only reads its integer arguments; -1 is also a
    // valid nice value, so an error shows only through errno (cleared above).
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    (now != -1 || nix::errno::Errno::last_raw() == 0).then_some(now)
}

fn thread_id() -> Option<libc::id_t> {
    libc::id_t::try_from(nix::unistd::gettid().as_raw()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = thread_nice().expect("nice");
        let inner = std::thread::spawn(|| {
            let start = thread_nice().expect("nice");
            lower_thread_priority(3);
            let lowered = thread_nice().expect("nice");
            lower_thread_priority(100);
            (start, lowered, thread_nice().expect("nice"))
        })
        .join()
        .expect("thread");
        assert_eq!(inner.1, (inner.0 + 3).min(19));
        assert_eq!(inner.2, 19, "capped at the lowest priority");
        assert_eq!(
            thread_nice(),
            Some(before),
            "the spawning thread is unchanged"
        );
        lower_thread_priority(0);
        assert_eq!(thread_nice(), Some(before), "0 steps change nothing");
    }
}

//! Files the container engine itself reads from an image's root filesystem.
//!
//! Before a container's first process exists, the engine resolves the
//! container's user inside the image: dockerd (`oci.WithUser` →
//! `user.GetExecUserPath`) and containerd's CRI read the image's
//! `/etc/passwd` and `/etc/group` for every container, even for root. Those
//! reads happen in the engine's cgroup, so the syscall tracer, which follows
//! the container's cgroup, never sees them; left on disk they cost a cold
//! start two disk reads. Profiles therefore always list these files (when
//! the image has them) at the very start of the start-up.

/// Image paths an engine reads at container creation, in reading order.
pub const ENGINE_READS: &[&str] = &["/etc/passwd", "/etc/group"];

/// The engine reads among `present` (paths the image has as regular files,
/// symlinks resolved), in [`ENGINE_READS`] order, each once.
pub fn engine_reads<'a>(present: impl Fn(&str) -> bool + 'a) -> Vec<&'static str> {
    ENGINE_READS
        .iter()
        .copied()
        .filter(|p| present(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subset_keeps_the_reading_order() {
        for mask in 0..(1u32 << ENGINE_READS.len()) {
            let has = |p: &str| {
                ENGINE_READS
                    .iter()
                    .position(|q| *q == p)
                    .is_some_and(|i| mask & (1 << i) != 0)
            };
            let got = engine_reads(has);
            let want: Vec<&str> = ENGINE_READS
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(got, want, "mask {mask:b}");
        }
    }

    #[test]
    fn paths_are_absolute_and_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for p in ENGINE_READS {
            assert!(p.starts_with('/') && !p.contains(".."), "{p}");
            assert!(seen.insert(*p), "{p} twice");
        }
        assert!(ENGINE_READS.contains(&"/etc/passwd") && ENGINE_READS.contains(&"/etc/group"));
    }
}

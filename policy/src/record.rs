//! The daemon's recordings of container cold starts: which starts to
//! record, and when a recording is over.

use std::fmt;

/// Why a container start is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Recording is turned off (`record_starts = false`).
    Off,
    /// The container's root is not an nvtier snapshot (another driver's
    /// container, `nvtier run`, a host on an overlay root).
    NotOurs,
    /// The image's profile is younger than `profile_max_age_s` (or exists,
    /// with a maximum age of 0).
    Fresh,
    /// `record_max_concurrent` recordings are running.
    Busy,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::Off => "recording is off",
            Skip::NotOurs => "not an nvtier container",
            Skip::Fresh => "the image's profile is fresh",
            Skip::Busy => "too many recordings at once",
        })
    }
}

/// What is known about a container start when it is first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub enabled: bool,
    /// The root is an nvtier snapshot over a known image.
    pub ours: bool,
    /// Age of the image's profile; `None` = no profile.
    pub profile_age_ms: Option<u64>,
    /// `profile_max_age_s` in ms (0 = a profile never goes stale).
    pub max_age_ms: u64,
    /// Recordings running now.
    pub active: usize,
    pub max_concurrent: usize,
}

/// Record this start, or why not. A profile older than the maximum age is
/// recorded again; a profile exactly at the age is still fresh.
pub fn should_record(s: &Start) -> Result<(), Skip> {
    if !s.enabled {
        return Err(Skip::Off);
    }
    if !s.ours {
        return Err(Skip::NotOurs);
    }
    if let Some(age) = s.profile_age_ms {
        if s.max_age_ms == 0 || age <= s.max_age_ms {
            return Err(Skip::Fresh);
        }
    }
    if s.active >= s.max_concurrent {
        return Err(Skip::Busy);
    }
    Ok(())
}

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The container's first process exited.
    Exited,
    /// No new file for the quiet period.
    Quiet,
    /// The maximum window passed.
    Window,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            End::Exited => "the container exited",
            End::Quiet => "quiet period",
            End::Window => "maximum window",
        })
    }
}

/// The state of a running recording, in ms since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub elapsed_ms: u64,
    /// When the last new file was seen.
    pub last_new_ms: u64,
    pub alive: bool,
    pub quiet_ms: u64,
    pub max_ms: u64,
}

/// Whether the recording is over, and why. An exit ends it first (nothing
/// more can come), then the window, then the quiet period.
pub fn recording_over(p: &Progress) -> Option<End> {
    if !p.alive {
        return Some(End::Exited);
    }
    if p.elapsed_ms >= p.max_ms {
        return Some(End::Window);
    }
    if p.elapsed_ms.saturating_sub(p.last_new_ms) >= p.quiet_ms {
        return Some(End::Quiet);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_decision() {
        for enabled in [false, true] {
            for ours in [false, true] {
                for age in [None, Some(0), Some(999), Some(1000), Some(1001)] {
                    for max_age_ms in [0, 1000] {
                        for active in 0..4 {
                            let s = Start {
                                enabled,
                                ours,
                                profile_age_ms: age,
                                max_age_ms,
                                active,
                                max_concurrent: 2,
                            };
                            let stale = match age {
                                None => true,
                                Some(a) => max_age_ms > 0 && a > max_age_ms,
                            };
                            let want = if !enabled {
                                Err(Skip::Off)
                            } else if !ours {
                                Err(Skip::NotOurs)
                            } else if !stale {
                                Err(Skip::Fresh)
                            } else if active >= 2 {
                                Err(Skip::Busy)
                            } else {
                                Ok(())
                            };
                            assert_eq!(should_record(&s), want, "{s:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_end_decision() {
        for alive in [false, true] {
            for elapsed_ms in 0..=12u64 {
                for last_new_ms in 0..=elapsed_ms {
                    let p = Progress {
                        elapsed_ms,
                        last_new_ms,
                        alive,
                        quiet_ms: 3,
                        max_ms: 10,
                    };
                    let want = if !alive {
                        Some(End::Exited)
                    } else if elapsed_ms >= 10 {
                        Some(End::Window)
                    } else if elapsed_ms - last_new_ms >= 3 {
                        Some(End::Quiet)
                    } else {
                        None
                    };
                    assert_eq!(recording_over(&p), want, "{p:?}");
                }
            }
        }
    }

    #[test]
    fn messages_name_the_reason() {
        assert!(Skip::Busy.to_string().contains("recordings"));
        assert!(End::Quiet.to_string().contains("quiet"));
    }
}

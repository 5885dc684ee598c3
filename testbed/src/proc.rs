//! Running child processes: own process group (a terminal ctrl-c reaches
//! only nvbench, which then stops between steps and tears the testbed down),
//! captured output, timeouts, and wall-clock timing taken right when the
//! child is reaped.

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The signal that asked us to stop (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

// Linux signal numbers; the functions come from the C library std already
// links (no extra crate).
const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
}

extern "C" fn on_signal(sig: i32) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Catch SIGINT/SIGTERM/SIGHUP: remember them instead of dying, so the
/// teardown guard runs.
pub fn install_signal_handlers() {
    let handler: extern "C" fn(i32) = on_signal;
    for s in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: glibc `signal` with a handler that only does an atomic store.
        unsafe {
            signal(s, handler as usize);
        }
    }
}

/// Fail if a stop signal arrived.
pub fn check_stop() -> Result<()> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        s => bail!("interrupted by signal {s}"),
    }
}

fn stop_requested() -> bool {
    STOP_SIGNAL.load(Ordering::SeqCst) != 0
}

/// Signal a whole process group.
fn kill_group(pgid: u32, sig: i32) {
    if let Ok(p) = i32::try_from(pgid) {
        if p > 1 {
            // SAFETY: plain syscall wrapper; a negative pid names the group.
            unsafe {
                kill(-p, sig);
            }
        }
    }
}

/// The outcome of a finished command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From just before spawning to just after reaping.
    pub elapsed: Duration,
}

impl Output {
    pub fn elapsed_ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3
    }
}

/// A short printable form of a command.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// How a command is run.
#[derive(Clone, Copy)]
pub struct Opts {
    pub timeout: Duration,
    /// Kill the command when a stop signal arrives (off for teardown).
    pub interruptible: bool,
}

impl Opts {
    pub fn new(timeout_s: u64) -> Opts {
        Opts {
            timeout: Duration::from_secs(timeout_s),
            interruptible: true,
        }
    }
}

/// Run `cmd` to completion in its own process group with output captured.
/// A non-zero exit is *not* an error here (see [`run_ok`]).
pub fn run(cmd: &mut Command, opts: Opts) -> Result<Output> {
    let desc = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{desc}`"))?;
    let pgid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = child.wait_with_output();
        let elapsed = t0.elapsed();
        let _ = tx.send((r, elapsed));
    });
    let mut killed: Option<(String, Instant)> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((r, elapsed)) => {
                let out = r.with_context(|| format!("waiting for `{desc}`"))?;
                if let Some((why, _)) = killed {
                    bail!("`{desc}` {why}");
                }
                return Ok(Output {
                    status: out.status,
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    elapsed,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => match &killed {
                None => {
                    let why = if opts.interruptible && stop_requested() {
                        Some("was stopped (interrupted)".to_string())
                    } else if t0.elapsed() > opts.timeout {
                        Some(format!("timed out after {} s", opts.timeout.as_secs()))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        kill_group(pgid, SIGTERM);
                        killed = Some((why, Instant::now()));
                    }
                }
                Some((_, at)) if at.elapsed() > Duration::from_secs(5) => {
                    kill_group(pgid, SIGKILL);
                }
                Some(_) => {}
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("lost track of `{desc}`")
            }
        }
    }
}

/// Like [`run`], but a non-zero exit is an error that shows the stderr.
pub fn run_ok(cmd: &mut Command, opts: Opts) -> Result<Output> {
    let desc = describe(cmd);
    let out = run(cmd, opts)?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}):\n{}{}",
            out.status,
            tail(&out.stderr, 40),
            if out.stderr.trim().is_empty() {
                tail(&out.stdout, 20)
            } else {
                String::new()
            }
        );
    }
    Ok(out)
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut t = lines[start..].join("\n");
    if !t.is_empty() {
        t.push('\n');
    }
    t
}

/// Parse `KEY=VALUE` lines (other lines are ignored).
pub fn parse_kv(s: &str) -> Vec<(String, String)> {
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            let ok = !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            ok.then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_lines() {
        let kv = parse_kv("PMEM_DIR=/run/x/pmem\nwarning: foo = bar\nLOOP_MAJMIN=7:3\n=x\n");
        assert_eq!(
            kv,
            vec![
                ("PMEM_DIR".to_string(), "/run/x/pmem".to_string()),
                ("LOOP_MAJMIN".to_string(), "7:3".to_string())
            ]
        );
    }

    #[test]
    fn runs_and_times() {
        let out = run(
            Command::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"]),
            Opts::new(10),
        )
        .expect("sh runs");
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
        assert!(run_ok(Command::new("false").arg("x"), Opts::new(10)).is_err());
    }

    #[test]
    fn timeout_kills_group() {
        let t0 = Instant::now();
        let opts = Opts {
            timeout: Duration::from_millis(200),
            interruptible: false,
        };
        let r = run(Command::new("sh").args(["-c", "sleep 30 & sleep 30"]), opts);
        assert!(r.is_err());
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("", 2), "");
    }
}

//! `nvtier trace`.

use crate::output::{human, print_json, resolve_image, short};
use anyhow::{Context, Result};
use nvtier::store::Store;
use nvtier::trace::{TraceOptions, TraceReport, TracerChoice, Window};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    image: String,
    /// End the trace window after SECS even if CMD still runs.
    #[arg(long, value_name = "SECS")]
    window: Option<f64>,
    /// Trace until CMD exits (the default without --window).
    #[arg(long, conflicts_with = "window")]
    until_exit: bool,
    /// End the window when 127.0.0.1:PORT accepts a connection.
    #[arg(long, value_name = "PORT")]
    ready_port: Option<u16>,
    /// End the window when PATH (inside the image) exists.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<String>,
    /// With --ready-port/--ready-file: keep tracing SECS after ready,
    /// for what a server still loads once it listens. The reported
    /// elapsed time includes it.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    after_ready: f64,
    /// Do not drop the page cache first.
    #[arg(long)]
    warm: bool,
    /// auto (eBPF, else fanotify, else inotify), ebpf, fanotify or
    /// inotify. NVTIER_TRACER overrides.
    #[arg(long, default_value = "auto")]
    tracer: TracerChoice,
    /// Miss mode: list every image file read from the disk tier.
    #[arg(long)]
    misses: bool,
    #[arg(long)]
    json: bool,
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

pub fn run(store: &Store, a: Args) -> Result<()> {
    let name = resolve_image(store, &a.image)?;
    let opts = TraceOptions {
        tracer: a.tracer,
        warm: a.warm,
        window: Window {
            max: a.window.map(Duration::from_secs_f64),
            ready_port: a.ready_port,
            ready_file: a.ready_file,
            after_ready: Duration::try_from_secs_f64(a.after_ready)
                .context("--after-ready must be a number of seconds >= 0")?,
        },
        quiet_stdout: a.json,
    };
    let r = nvtier::trace::trace(store, &name, &a.cmd, &opts)?;
    if a.json {
        return print_json(&r);
    }
    eprintln!("tracer: {} ({})", r.tracer, r.tracer_reason);
    print_text(&r, a.misses);
    Ok(())
}

fn print_text(r: &TraceReport, list_misses: bool) {
    println!(
        "{}: exit {} in {:.1} ms; {} image files, {} ({:.1}% of {} image bytes){}",
        r.image,
        r.exit_code,
        r.elapsed_ms,
        r.files,
        human(r.bytes),
        r.hot_share * 100.0,
        human(r.image_bytes),
        if r.lost_events > 0 {
            format!("; {} events LOST", r.lost_events)
        } else {
            String::new()
        }
    );
    for (i, (c, n, b)) in r.per_layer.iter().enumerate() {
        println!("  layer {i} {}: {n} files, {}", short(c), human(*b));
    }
    match (&r.misses, r.miss_bytes) {
        (Some(m), Some(b)) => {
            println!("disk-tier misses: {} files, {}", m.len(), human(b));
            if list_misses {
                for f in m {
                    println!(
                        "  miss {:>9.1} ms  {:<12}  {:>10}  {}",
                        f.first_access_ms,
                        short(&f.layer_chain_id),
                        f.bytes.map(human).unwrap_or_else(|| "-".into()),
                        f.path
                    );
                }
            }
        }
        _ => println!(
            "disk-tier misses: unknown: {}",
            r.misses_unknown_reason
                .as_deref()
                .unwrap_or("the tracer cannot tell")
        ),
    }
}

//! The JSON-lines sample file that testbed/nvbench.sh appends to: one JSON
//! object per line, each with a string "kind". Unknown fields are ignored;
//! unknown kinds are skipped with a warning.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Machine {
    pub cpu: Option<String>,
    pub nproc: Option<u64>,
    pub mem_total_kib: Option<u64>,
    pub kernel: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub category: String,
    #[serde(default)]
    pub ready: Option<String>,
    #[serde(default)]
    pub layers: Option<u64>,
    #[serde(default)]
    pub compressed_bytes: Option<u64>,
    #[serde(default)]
    pub unpacked_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemInfo {
    pub id: String,
    pub label: String,
    #[serde(default)]
    pub desc: Option<String>,
}

/// The run's description (the last `meta` line wins).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub date: Option<String>,
    pub machine: Option<Machine>,
    pub reps: Option<u64>,
    pub quick: Option<bool>,
    pub rates: Vec<String>,
    pub engine: Option<String>,
    pub hdd: Option<serde_json::Value>,
    pub pmem: Option<String>,
    pub run_seconds: Option<f64>,
    /// The first run into this samples file (`--resume` adds runs).
    pub started: Option<String>,
    /// Runs into this samples file.
    pub runs: Option<u64>,
    /// (rate, image) cells measured, and selected over all runs.
    pub cells_done: Option<u64>,
    pub cells_total: Option<u64>,
    pub images: Vec<ImageInfo>,
    pub systems: Vec<SystemInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deploy {
    pub rate: String,
    pub system: String,
    pub image: String,
    pub rep: u64,
    pub ok: bool,
    #[serde(default)]
    pub deploy_ms: Option<f64>,
    #[serde(default)]
    pub last_byte_ms: Option<f64>,
    #[serde(default)]
    pub store_after_download_ms: Option<f64>,
    #[serde(default)]
    pub sync_ms: Option<f64>,
    #[serde(default)]
    pub net_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    AfterDeploy,
    AfterMigration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pmem {
    pub rate: String,
    pub system: String,
    pub image: String,
    pub when: When,
    pub bytes: u64,
    #[serde(default)]
    pub du_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Coldstart {
    pub rate: String,
    pub system: String,
    pub image: String,
    pub rep: u64,
    pub ok: bool,
    #[serde(default)]
    pub ms: Option<f64>,
    #[serde(default)]
    pub disk_read_ios: Option<u64>,
    #[serde(default)]
    pub disk_read_bytes: Option<u64>,
    #[serde(default)]
    pub disk_write_ios: Option<u64>,
    #[serde(default)]
    pub disk_write_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartupRead {
    #[serde(default)]
    pub rate: Option<String>,
    pub image: String,
    #[serde(default)]
    pub hot_files: Option<u64>,
    pub hot_bytes: u64,
    pub image_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorSample {
    #[serde(default)]
    pub rate: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    pub message: String,
}

/// A sample with the (1-based) line it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Line<T> {
    pub line: usize,
    #[serde(flatten)]
    pub s: T,
}

/// Everything in one samples file, in file order per kind.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub meta: Option<Meta>,
    pub meta_lines: usize,
    pub deploys: Vec<Line<Deploy>>,
    pub pmem: Vec<Line<Pmem>>,
    pub coldstarts: Vec<Line<Coldstart>>,
    pub startup_reads: Vec<Line<StartupRead>>,
    pub checks: Vec<Line<Check>>,
    pub errors: Vec<Line<ErrorSample>>,
    pub warnings: Vec<String>,
    pub lines: usize,
}

fn typed<T: DeserializeOwned>(v: serde_json::Value, kind: &str) -> Result<T> {
    serde_json::from_value(v).with_context(|| format!("bad \"{kind}\" sample"))
}

fn check_ms(what: &str, v: Option<f64>, required: bool) -> Result<()> {
    match v {
        None if required => bail!("\"{what}\" is missing or null in an ok sample"),
        Some(x) if !x.is_finite() || x < 0.0 => {
            bail!("\"{what}\" is {x}, not a time in ms >= 0")
        }
        _ => Ok(()),
    }
}

impl Samples {
    pub fn read(path: &Path) -> Result<Samples> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read samples file {}", path.display()))?;
        Samples::parse(&text, &path.display().to_string())
    }

    /// Parses the whole file; the first malformed line is an error naming
    /// `file:line`.
    pub fn parse(text: &str, file: &str) -> Result<Samples> {
        let mut s = Samples::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            s.lines += 1;
            s.add(raw, line, file)
                .with_context(|| format!("{file}:{line}"))?;
        }
        if s.lines == 0 {
            bail!("{file}: no samples (the file is empty)");
        }
        if s.meta_lines > 1 {
            s.warnings.push(format!(
                "{file}: {} meta lines; the last one is used",
                s.meta_lines
            ));
        }
        Ok(s)
    }

    fn add(&mut self, raw: &str, line: usize, file: &str) -> Result<()> {
        let v: serde_json::Value = serde_json::from_str(raw).context("not valid JSON")?;
        let kind = match v.get("kind") {
            Some(serde_json::Value::String(k)) => k.clone(),
            Some(_) => bail!("\"kind\" is not a string"),
            None if v.is_object() => bail!("no \"kind\" field"),
            None => bail!("not a JSON object"),
        };
        match kind.as_str() {
            "meta" => {
                self.meta = Some(typed(v, &kind)?);
                self.meta_lines += 1;
            }
            "deploy" => {
                let d: Deploy = typed(v, &kind)?;
                check_ms("deploy_ms", d.deploy_ms, d.ok)?;
                check_ms("last_byte_ms", d.last_byte_ms, false)?;
                check_ms("store_after_download_ms", d.store_after_download_ms, false)?;
                check_ms("sync_ms", d.sync_ms, false)?;
                self.deploys.push(Line { line, s: d });
            }
            "pmem" => self.pmem.push(Line {
                line,
                s: typed(v, &kind)?,
            }),
            "coldstart" => {
                let c: Coldstart = typed(v, &kind)?;
                check_ms("ms", c.ms, c.ok)?;
                self.coldstarts.push(Line { line, s: c });
            }
            "startup_read" => {
                let r: StartupRead = typed(v, &kind)?;
                if r.hot_bytes > r.image_bytes {
                    self.warnings.push(format!(
                        "{file}:{line}: startup_read of {}: hot_bytes {} > image_bytes {}",
                        r.image, r.hot_bytes, r.image_bytes
                    ));
                }
                self.startup_reads.push(Line { line, s: r });
            }
            "check" => self.checks.push(Line {
                line,
                s: typed(v, &kind)?,
            }),
            // Written by nvbench.sh after each finished (rate, image) cell so
            // that `--resume` knows what to skip; the meta line carries the
            // totals the report needs.
            "cell" => {}
            "error" => self.errors.push(Line {
                line,
                s: typed(v, &kind)?,
            }),
            other => self
                .warnings
                .push(format!("{file}:{line}: unknown kind \"{other}\" ignored")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Samples::parse(text, "s.jsonl") {
            Ok(_) => panic!("parsed: {text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    const META: &str = r#"{"kind":"meta","date":"2026-11-22T10:00:00Z","reps":3,"rates":["1gbit"],"images":[],"systems":[]}"#;

    #[test]
    fn error_messages_name_file_and_line() {
        let e = err(&format!(
            "{META}\n\n{{\"kind\":\"deploy\",\"rate\":\"1gbit\"}}\n"
        ));
        assert!(e.starts_with("s.jsonl:3: bad \"deploy\" sample"), "{e}");
        assert!(e.contains("missing field `system`"), "{e}");

        let e = err(&format!("{META}\nnot json\n"));
        assert!(e.starts_with("s.jsonl:2: not valid JSON"), "{e}");

        let e = err("{\"rate\":\"1gbit\"}\n");
        assert_eq!(e, "s.jsonl:1: no \"kind\" field");

        let e = err("[1,2]\n");
        assert_eq!(e, "s.jsonl:1: not a JSON object");

        let e = err("{\"kind\":7}\n");
        assert_eq!(e, "s.jsonl:1: \"kind\" is not a string");

        let e = err(
            "{\"kind\":\"pmem\",\"rate\":\"1gbit\",\"system\":\"hot\",\"image\":\"x\",\"when\":\"later\",\"bytes\":1}\n",
        );
        assert!(e.starts_with("s.jsonl:1: bad \"pmem\" sample"), "{e}");
        assert!(e.contains("unknown variant `later`"), "{e}");

        let e = err(
            "{\"kind\":\"coldstart\",\"rate\":\"1gbit\",\"system\":\"hot\",\"image\":\"x\",\"rep\":1,\"ok\":true,\"ms\":null}\n",
        );
        assert_eq!(e, "s.jsonl:1: \"ms\" is missing or null in an ok sample");

        let e = err(
            "{\"kind\":\"deploy\",\"rate\":\"1gbit\",\"system\":\"docker\",\"image\":\"x\",\"rep\":1,\"ok\":true,\"deploy_ms\":-3}\n",
        );
        assert_eq!(e, "s.jsonl:1: \"deploy_ms\" is -3, not a time in ms >= 0");

        let e = err("\n \n");
        assert_eq!(e, "s.jsonl: no samples (the file is empty)");
    }

    #[test]
    fn unknown_kinds_warn_and_last_meta_wins() {
        let text = format!(
            "{META}\n{{\"kind\":\"weather\",\"sky\":\"blue\"}}\n{}\n\
             {{\"kind\":\"deploy\",\"rate\":\"1gbit\",\"system\":\"docker\",\"image\":\"x\",\"rep\":1,\"ok\":false,\"deploy_ms\":null,\"extra\":1}}\n",
            META.replace("\"reps\":3", "\"reps\":5")
        );
        let s = Samples::parse(&text, "f").expect("parses");
        assert_eq!(s.meta.as_ref().and_then(|m| m.reps), Some(5));
        assert_eq!(s.deploys.len(), 1);
        assert_eq!(s.deploys[0].line, 4);
        assert!(s
            .warnings
            .iter()
            .any(|w| w == "f:2: unknown kind \"weather\" ignored"));
        assert!(s.warnings.iter().any(|w| w.contains("2 meta lines")));
    }

    #[test]
    fn resume_markers_are_known_and_silent() {
        let text = format!(
            "{META}\n{{\"kind\":\"cell\",\"rate\":\"1gbit\",\"image\":\"x\",\"reps\":3,\"date\":\"2026-11-22\"}}\n"
        );
        let s = Samples::parse(&text, "f").expect("parses");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }
}

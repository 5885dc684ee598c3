//! `nvbench report-corpus`: readiness times of the corpus images
//! (testbed/corpus/check.sh), as a table or a JSON array.

use super::{indent, members_raw, object_raw, read_jsonl_raw};
use anyhow::Result;
use serde_json::Value;
use std::path::PathBuf;

pub struct Args {
    /// JSON lines, one per image: {name, category, ready, layer_sizes (the
    /// manifest's layer sizes), unpacked_bytes, ok, error} and, when ok,
    /// runs_ms: the warm runs' times.
    pub samples: PathBuf,
    /// Print the JSON array instead of the table.
    pub json: bool,
}

/// The keys of a result, in output order (ready_ms follows when ok).
const KEYS: [&str; 7] = [
    "name",
    "category",
    "ready",
    "layers",
    "compressed_bytes",
    "unpacked_bytes",
    "ok",
];

/// One image's result as compact JSON text: layer_sizes becomes layers
/// (their count) and compressed_bytes (their sum); runs_ms becomes
/// ready_ms {median (upper middle), min, runs (sorted)}. Other members are
/// kept as recorded.
pub fn result(line: &str, v: &Value) -> Result<String> {
    let members: Vec<(String, String)> = members_raw(line)?
        .into_iter()
        .flat_map(|(k, raw)| {
            if k == "layer_sizes" {
                let sizes = v["layer_sizes"].as_array().cloned().unwrap_or_default();
                let sum: u64 = sizes.iter().filter_map(Value::as_u64).sum();
                vec![
                    ("layers".to_string(), sizes.len().to_string()),
                    ("compressed_bytes".to_string(), sum.to_string()),
                ]
            } else {
                vec![(k, raw)]
            }
        })
        .collect();
    let Some(runs) = v["runs_ms"].as_array() else {
        return Ok(object_raw(&members));
    };
    let mut runs: Vec<Value> = runs.clone();
    runs.sort_by(|a, b| {
        a.as_f64()
            .unwrap_or(f64::NAN)
            .total_cmp(&b.as_f64().unwrap_or(f64::NAN))
    });
    let mut fields: Vec<String> = KEYS
        .iter()
        .filter_map(|k| members.iter().find(|(m, _)| m == k))
        .map(|(k, raw)| format!("{}:{raw}", Value::from(k.as_str())))
        .collect();
    if let (Some(first), Some(mid)) = (runs.first(), runs.get(runs.len() / 2)) {
        fields.push(format!(
            r#""ready_ms":{{"median":{mid},"min":{first},"runs":{}}}"#,
            Value::Array(runs.clone())
        ));
    }
    Ok(format!("{{{}}}", fields.join(",")))
}

/// Bytes as MB with one decimal, rounded half away from zero; "-" if none.
fn mb(v: &Value) -> String {
    match v.as_f64() {
        Some(b) => {
            let x = (b / 1e5).round() / 10.0;
            if x.fract() == 0.0 {
                format!("{}", x as i64)
            } else {
                format!("{x}")
            }
        }
        None => "-".into(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The table: a header and one row per image, columns separated by two
/// spaces and padded (the last column is not).
pub fn table(results: &[Value]) -> Vec<String> {
    let mut rows: Vec<Vec<String>> = vec![[
        "NAME",
        "CATEGORY",
        "READY",
        "LAYERS",
        "GZ_MB",
        "UNPACKED_MB",
        "READY_MS",
        "MIN_MS",
        "STATUS",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()];
    for r in results {
        rows.push(vec![
            text(&r["name"]),
            text(&r["category"]),
            text(&r["ready"]),
            text(&r["layers"]),
            mb(&r["compressed_bytes"]),
            mb(&r["unpacked_bytes"]),
            text(&r["ready_ms"]["median"]),
            text(&r["ready_ms"]["min"]),
            if r["ok"] == true { "ok" } else { "FAILED" }.into(),
        ]);
    }
    let cols = rows[0].len();
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut l = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == cols {
                    l.push_str(cell);
                } else {
                    l.push_str(cell);
                    l.extend(std::iter::repeat_n(
                        ' ',
                        width[c] - cell.chars().count() + 2,
                    ));
                }
            }
            l
        })
        .collect()
}

pub fn run(a: Args) -> Result<()> {
    let rows = read_jsonl_raw(&a.samples)?;
    let texts: Vec<String> = rows
        .iter()
        .map(|(l, v)| result(l, v))
        .collect::<Result<_>>()?;
    if a.json {
        println!("{}", indent(&format!("[{}]", texts.join(",")), 2));
    } else {
        let results: Vec<Value> = texts
            .iter()
            .map(|t| super::parse_exact(t))
            .collect::<Result<_>>()?;
        for l in table(&results) {
            println!("{l}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_table() {
        let ok = r#"{"name":"redis","category":"database","ready":"port:6379","layer_sizes":[41000000,200000,50000],"unpacked_bytes":120049999,"ok":true,"runs_ms":[40,31,35,90]}"#;
        let bad =
            r#"{"name":"x","category":"other","ready":"exit","ok":false,"error":"not built"}"#;
        let r = result(ok, &super::super::parse_exact(ok).unwrap()).unwrap();
        assert_eq!(
            r,
            r#"{"name":"redis","category":"database","ready":"port:6379","layers":3,"compressed_bytes":41250000,"unpacked_bytes":120049999,"ok":true,"ready_ms":{"median":40,"min":31,"runs":[31,35,40,90]}}"#
        );
        assert_eq!(result(bad, &Value::Null).unwrap(), bad);
        let failed = r#"{"name":"y","ready":"exit","layer_sizes":[1,2],"unpacked_bytes":5,"ok":false,"error":"boom"}"#;
        assert_eq!(
            result(failed, &super::super::parse_exact(failed).unwrap()).unwrap(),
            r#"{"name":"y","ready":"exit","layers":2,"compressed_bytes":3,"unpacked_bytes":5,"ok":false,"error":"boom"}"#
        );
        let vals: Vec<Value> = [r.as_str(), bad]
            .iter()
            .map(|t| super::super::parse_exact(t).unwrap())
            .collect();
        assert_eq!(
            table(&vals),
            vec![
                "NAME   CATEGORY  READY      LAYERS  GZ_MB  UNPACKED_MB  READY_MS  MIN_MS  STATUS",
                "redis  database  port:6379  3       41.3   120          40        31      ok",
                "x      other     exit       -       -      -            -         -       FAILED",
            ]
        );
    }
}

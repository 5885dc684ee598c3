//! Reports of the benchmark scripts (testbed/bench-*.sh, corpus/check.sh):
//! each reads the JSON-lines samples a script recorded and writes the
//! results files. One module per report; the helpers here are shared.

pub mod coldstart;
pub mod corpus;
pub mod docker;
pub mod docker_plugin;
pub mod flat;
pub mod nvbench_run;
pub mod tiering;
pub mod trace;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// Read a JSON-lines file (blank lines skipped); a bad line is an error
/// naming FILE:LINE.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    map_jsonl(path, |l| Ok(serde_json::from_str(l)?))
}

/// The non-blank lines of a JSON-lines file, each through `parse`; an error
/// names FILE:LINE.
fn map_jsonl<T>(path: &Path, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

/// Read one JSON document (numbers parsed exactly, see [`parse_exact`]).
pub fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_exact(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// Median of the values (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The median of JSON numbers as a JSON number: for an odd count the middle
/// value itself (an integer stays an integer), for an even count the mean
/// of the middle two as a float.
pub fn median_value(v: &[Value]) -> Option<Value> {
    let mut s: Vec<&Value> = v.iter().filter(|x| x.is_number()).collect();
    if s.is_empty() {
        return None;
    }
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    s.sort_by(|a, b| f(a).total_cmp(&f(b)));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2].clone()
    } else {
        Value::from((f(s[n / 2 - 1]) + f(s[n / 2])) / 2.0)
    })
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// An integer with `,` between thousands: 1234567 → "1,234,567".
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = if n < 0 {
        "-".to_string()
    } else {
        String::new()
    };
    out.push_str(&digits[..first]);
    for chunk in digits.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    out
}

/// Facts about this machine for the report headers.
#[derive(Debug, Clone)]
pub struct Host {
    pub cpu: String,
    pub nproc: usize,
    pub mem_kib: u64,
    pub kernel: String,
    pub hostname: String,
}

pub fn host() -> Host {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let uts = nix::sys::utsname::uname().ok();
    let s = |f: Option<&std::ffi::OsStr>| f.map(|x| x.to_string_lossy().into_owned());
    Host {
        cpu,
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_kib,
        kernel: s(uts.as_ref().map(|u| u.release())).unwrap_or_default(),
        hostname: s(uts.as_ref().map(|u| u.nodename())).unwrap_or_default(),
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
pub fn utc_timestamp(t: i64) -> String {
    let (y, m, d) = civil(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `YYYY-MM-DD` of a Unix time (UTC).
pub fn utc_date(t: i64) -> String {
    utc_timestamp(t)[..10].to_string()
}

/// JSON text laid out with one space of indentation per level, `, ` and
/// `: ` separators, empty containers as `[]`/`{}` (the layout of the
/// results files in testbed/results), no trailing newline. Strings, numbers and key
/// order are copied as they are.
pub fn indent1(json: &str) -> String {
    indent(json, 1)
}

/// [`indent1`] with `width` spaces per level (2: the layout of `jq .`).
pub fn indent(json: &str, width: usize) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let (mut in_str, mut esc) = (false, false);
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', depth * width));
    };
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(c);
                    out.push(close);
                } else {
                    out.push(c);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Raw JSON texts (samples as recorded) spliced into a serialized
/// document, so that their numbers and key order are kept exactly: `put`
/// returns a placeholder value to serialize in their place.
#[derive(Debug, Default)]
pub struct Splice {
    raws: Vec<String>,
}

impl Splice {
    pub fn put(&mut self, raw: &str) -> Value {
        self.raws.push(raw.trim().to_string());
        Value::String(format!("\u{1}{}", self.raws.len() - 1))
    }

    /// A JSON array of raw texts.
    pub fn put_all<'a>(&mut self, raws: impl IntoIterator<Item = &'a str>) -> Value {
        let joined: Vec<&str> = raws.into_iter().map(str::trim).collect();
        self.put(&format!("[{}]", joined.join(",")))
    }

    /// `v` serialized with the raw texts in place, laid out by [`indent1`].
    pub fn render<T: Serialize>(&self, v: &T) -> Result<String> {
        let mut s = serde_json::to_string(v)?;
        for (i, raw) in self.raws.iter().enumerate() {
            s = s.replace(&format!("\"\\u0001{i}\""), raw);
        }
        Ok(indent1(&s))
    }
}

/// Parse JSON text into a [`Value`] with every number correctly rounded
/// (std's float parsing; serde_json's default parser may be one unit in
/// the last place off, which would change numbers copied from a sample
/// into the results). Integers stay integers.
pub fn parse_exact(text: &str) -> Result<Value> {
    let mut p = Parser::new(text);
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        anyhow::bail!("trailing characters at column {}", p.i + 1);
    }
    Ok(v)
}

/// The members of a JSON object as (key, raw value text), in order.
pub fn members_raw(text: &str) -> Result<Vec<(String, String)>> {
    let mut p = Parser::new(text);
    let mut out = Vec::new();
    p.eat(b'{')?;
    p.items(b'}', |p| {
        let k = p.string()?;
        p.eat(b':')?;
        p.ws();
        let start = p.i;
        p.value()?;
        out.push((k, text[start..p.i].to_string()));
        Ok(())
    })?;
    Ok(out)
}

/// A JSON object's text from (key, raw value text) members.
pub fn object_raw(members: &[(String, String)]) -> String {
    let m: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", m.join(","))
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser {
            s: text.as_bytes(),
            text,
            i: 0,
        }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        self.ws();
        if self.s.get(self.i) != Some(&c) {
            anyhow::bail!("expected '{}' at column {}", c as char, self.i + 1);
        }
        self.i += 1;
        Ok(())
    }

    fn string(&mut self) -> Result<String> {
        self.ws();
        let start = self.i;
        self.eat(b'"')?;
        let mut esc = false;
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                return Ok(serde_json::from_str(&self.text[start..self.i])?);
            }
        }
        anyhow::bail!("unterminated string at column {}", start + 1)
    }

    /// The comma-separated items of an object or array whose opening
    /// bracket was just read, each parsed by `item`, through `close`.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.ws();
        if self.s.get(self.i) == Some(&close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(&c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => anyhow::bail!(
                    "expected ',' or '{}' at column {}",
                    close as char,
                    self.i + 1
                ),
            }
        }
    }

    fn value(&mut self) -> Result<Value> {
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            anyhow::bail!("unexpected end of JSON");
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut m = serde_json::Map::new();
                self.items(b'}', |p| {
                    let k = p.string()?;
                    p.eat(b':')?;
                    m.insert(k, p.value()?);
                    Ok(())
                })?;
                Ok(Value::Object(m))
            }
            b'[' => {
                self.i += 1;
                let mut v = Vec::new();
                self.items(b']', |p| {
                    v.push(p.value()?);
                    Ok(())
                })?;
                Ok(Value::Array(v))
            }
            b'"' => Ok(Value::String(self.string()?)),
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && !matches!(self.s[self.i], b',' | b'}' | b']')
                    && !self.s[self.i].is_ascii_whitespace()
                {
                    self.i += 1;
                }
                let tok = &self.text[start..self.i];
                let bad = || anyhow::anyhow!("bad value '{tok}' at column {}", start + 1);
                Ok(match tok {
                    "null" => Value::Null,
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    t if t.bytes().all(|b| b.is_ascii_digit() || b == b'-') => t
                        .parse::<i64>()
                        .map(Value::from)
                        .or_else(|_| t.parse::<u64>().map(Value::from))
                        .map_err(|_| bad())?,
                    t => {
                        let x: f64 = t.parse().map_err(|_| bad())?;
                        serde_json::Number::from_f64(x)
                            .map(Value::Number)
                            .ok_or_else(bad)?
                    }
                })
            }
        }
    }
}

/// A JSON-lines file as (line, parsed value) pairs (blank lines skipped).
pub fn read_jsonl_raw(path: &Path) -> Result<Vec<(String, Value)>> {
    map_jsonl(path, |l| Ok((l.to_string(), parse_exact(l)?)))
}

/// Write `text` to `path`, creating its directory.
pub fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The Markdown lines joined, with a final newline.
pub fn lines(md: &[String]) -> String {
    md.join("\n") + "\n"
}

/// The Markdown lines joined ([`lines`]), written to `path` and printed.
pub fn write_markdown(path: &Path, md: &[String]) -> Result<()> {
    let text = lines(md);
    write(path, &text)?;
    print!("{text}");
    Ok(())
}

/// Values of `key` in the rows (numbers only).
pub fn nums(rows: &[&Value], key: &str) -> Vec<f64> {
    rows.iter().filter_map(|r| r[key].as_f64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(
            median_value(&[json!(5), json!(1), json!(3)]),
            Some(json!(3))
        );
        assert_eq!(median_value(&[json!(4), json!(2)]), Some(json!(3.0)));
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(356444318), "356,444,318");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1795350463), "2026-11-22T12:27:43Z");
        assert_eq!(utc_date(1795350463), "2026-11-22");
        assert_eq!(
            indent1(r#"{"a": [1, {}], "b": "x,{y}\"z", "c": []}"#),
            "{\n \"a\": [\n  1,\n  {}\n ],\n \"b\": \"x,{y}\\\"z\",\n \"c\": []\n}"
        );
    }

    #[test]
    fn exact_numbers() {
        let v = parse_exact(
            r#" {"a": [1, -2, 18446744073709551615, 189.87178699999998, 1e-5],
            "s": "\"x\u00e9", "t": true, "n": null, "o": {}} "#,
        )
        .unwrap();
        assert_eq!(v["a"][0], json!(1));
        assert_eq!(v["a"][1], json!(-2));
        assert_eq!(v["a"][2], json!(u64::MAX));
        assert_eq!(v["a"][3].as_f64(), Some(189.87178699999998));
        assert_eq!(v["a"][4].as_f64(), Some(1e-5));
        assert_eq!(v["s"], "\"x\u{e9}");
        assert_eq!(v["o"], json!({}));
        assert!(parse_exact("{\"a\": 1,}").is_err());
        assert!(parse_exact("[1] 2").is_err());
        assert!(parse_exact("{\"a\": 01x}").is_err());
    }

    #[test]
    fn raw_members() {
        let m = members_raw(r#"{"a": 1.50, "b": {"c": [1, 2]}, "d": "x"}"#).unwrap();
        assert_eq!(
            m,
            vec![
                ("a".to_string(), "1.50".to_string()),
                ("b".to_string(), r#"{"c": [1, 2]}"#.to_string()),
                ("d".to_string(), r#""x""#.to_string()),
            ]
        );
        assert_eq!(object_raw(&m[..2]), r#"{"a":1.50,"b":{"c": [1, 2]}}"#);
        assert!(members_raw("[1]").is_err());
    }

    #[test]
    fn splice_keeps_raw_numbers_and_order() {
        let mut sp = Splice::default();
        let v = json!({"n": 1.5, "s": sp.put_all(["{\"z\": 189.87178699999998, \"a\": null}"])});
        assert_eq!(
            sp.render(&v).unwrap(),
            "{\n \"n\": 1.5,\n \"s\": [\n  {\n   \"z\": 189.87178699999998,\n   \"a\": null\n  }\n ]\n}"
        );
    }
}

/// A JSON object that keeps its keys in insertion order.
#[derive(Debug, Clone)]
pub struct Ordered<T>(pub Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<T: Serialize> Serialize for Ordered<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// The distinct values of `key` in the rows, in order of appearance.
pub fn distinct<'a>(rows: &'a [Value], key: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for r in rows {
        if let Some(v) = r[key].as_str() {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

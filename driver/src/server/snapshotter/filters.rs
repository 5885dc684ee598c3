//! containerd's snapshot list filters.

use containerd_snapshots::{Info, Kind};

/// `name==v`, `labels."k"==v`, `parent!=v`, `kind==committed`, bare field
/// (exists); clauses separated by `,` are ANDed, filters are ORed.
/// Operators we do not support (`~=`) match everything: containerd re-checks
/// what it walks.
pub fn filter_matches(filters: &[String], info: &Info) -> bool {
    if filters.iter().all(|f| f.trim().is_empty()) {
        return true;
    }
    filters.iter().any(|f| {
        split_clauses(f)
            .iter()
            .all(|c| clause_matches(c.trim(), info))
    })
}

pub(super) fn split_clauses(f: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in f.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    out.push(cur);
    out
}

pub(super) fn unquote(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s)
        .replace("\\\"", "\"")
}

pub(super) fn clause_matches(c: &str, info: &Info) -> bool {
    if c.is_empty() {
        return true;
    }
    let (field, op, value) = if let Some((f, v)) = c.split_once("!=") {
        (f, "!=", Some(unquote(v)))
    } else if let Some((f, v)) = c.split_once("==") {
        (f, "==", Some(unquote(v)))
    } else if c.contains("~=") {
        return true;
    } else {
        (c, "", None)
    };
    let field = field.trim();
    let actual: Option<String> = if let Some(l) = field.strip_prefix("labels.") {
        info.labels.get(&unquote(l)).cloned()
    } else {
        match field {
            "name" => Some(info.name.clone()),
            "parent" => Some(info.parent.clone()),
            "kind" => Some(
                match info.kind {
                    Kind::View => "view",
                    Kind::Active => "active",
                    Kind::Committed => "committed",
                    Kind::Unknown => "unknown",
                }
                .into(),
            ),
            _ => return true,
        }
    };
    match (op, value) {
        ("==", Some(v)) => actual.as_deref() == Some(v.as_str()),
        ("!=", Some(v)) => actual.as_deref() != Some(v.as_str()),
        _ => actual.is_some_and(|a| !a.is_empty()),
    }
}

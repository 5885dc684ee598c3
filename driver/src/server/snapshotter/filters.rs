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

/// The byte offsets of `s`'s characters outside `"…"` quotes (a `\`
/// inside quotes escapes the next character).
fn unquoted(s: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let (mut quoted, mut escaped) = (false, false);
    s.char_indices().filter(move |&(_, ch)| {
        if escaped {
            escaped = false;
            return false;
        }
        match ch {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => return !quoted,
        }
        false
    })
}

pub(super) fn split_clauses(f: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, ch) in unquoted(f) {
        if ch == ',' {
            out.push(f[start..i].to_string());
            start = i + 1;
        }
    }
    out.push(f[start..].to_string());
    out
}

/// A `"…"` string with its `\\` and `\"` escapes undone (other escapes
/// are kept as written); anything else as it is, trimmed.
pub(super) fn unquote(s: &str) -> String {
    let s = s.trim();
    let Some(inner) = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) else {
        return s.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut it = inner.chars();
    while let Some(ch) = it.next() {
        match (ch, it.clone().next()) {
            ('\\', Some(n @ ('\\' | '"'))) => {
                out.push(n);
                it.next();
            }
            _ => out.push(ch),
        }
    }
    out
}

/// The first operator (`==`, `!=`, `~=`) outside quotes: (field, op, value).
fn split_op(c: &str) -> Option<(&str, &str, &str)> {
    let mut prev: Option<(usize, char)> = None;
    for (i, ch) in unquoted(c) {
        if let Some((j, p)) = prev {
            if ch == '=' && j + p.len_utf8() == i && matches!(p, '=' | '!' | '~') {
                return Some((&c[..j], &c[j..i + 1], &c[i + 1..]));
            }
        }
        prev = Some((i, ch));
    }
    None
}

pub(super) fn clause_matches(c: &str, info: &Info) -> bool {
    if c.is_empty() {
        return true;
    }
    let (field, op, value) = match split_op(c) {
        Some((_, "~=", _)) => return true,
        Some((f, op, v)) => (f, op, Some(unquote(v))),
        None => (c, "", None),
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

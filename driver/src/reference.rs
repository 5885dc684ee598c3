//! The image reference grammar (`[domain/]path[:tag][@digest]`), parsed
//! by hand.
//!
//! The registry client's own parser (`oci_spec`'s `Reference::try_from`)
//! compiles a large Unicode regex on first use: about 0.1–0.3 s of one CPU
//! on the testbed, before the first registry request of every `nvtier pull`
//! and every daemon start. This parser accepts the same language for ASCII
//! input and gives the same registry, repository, tag and digest (a
//! property test checks it against `oci_spec`), in microseconds. Tags are
//! ASCII only, as in Docker's grammar (the regex's `\w` also admits other
//! Unicode letters).

use oci_client::Reference;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("the reference is empty")]
    Empty,
    #[error("invalid reference format: {0}")]
    Format(&'static str),
    #[error("repository name must not be more than {NAME_MAX} characters")]
    NameTooLong,
    #[error("invalid checksum digest format")]
    DigestFormat,
    #[error("invalid checksum digest length")]
    DigestLength,
    #[error("unsupported digest algorithm")]
    DigestUnsupported,
}

/// Parse `s` as the registry client would, without its regex.
pub fn parse(s: &str) -> Result<Reference, RefError> {
    if s.is_empty() {
        return Err(RefError::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            if !is_digest(d) {
                return Err(RefError::Format("the digest after '@' is malformed"));
            }
            (r, Some(d))
        }
        None => (s, None),
    };
    // A ':' followed by no '/' separates the tag; any other ':' is a port.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => {
            if !is_tag(t) {
                return Err(RefError::Format("the tag after ':' is malformed"));
            }
            (n, Some(t))
        }
        _ => (rest, None),
    };
    if !is_name(name) {
        return Err(RefError::Format(
            "the name must be [domain[:port]/]path, path components lowercase",
        ));
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err(RefError::NameTooLong);
    }
    if let Some(d) = digest {
        check_digest_length(d)?;
    }
    let tag = match (tag, digest) {
        (None, None) => Some(DEFAULT_TAG),
        (t, _) => t,
    };
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_string(), d.to_string())
        }
        (Some(t), None) => Reference::with_tag(registry, repository, t.to_string()),
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
        (None, None) => Reference::with_tag(registry, repository, DEFAULT_TAG.to_string()),
    })
}

/// A name: the whole of it a path, or a domain, '/', and a path.
fn is_name(name: &str) -> bool {
    is_path(name)
        || name
            .split_once('/')
            .is_some_and(|(d, p)| is_domain(d) && is_path(p))
}

/// `component ('/' component)*`.
fn is_path(p: &str) -> bool {
    p.split('/').all(is_path_component)
}

/// `[a-z0-9]+ (sep [a-z0-9]+)*`, where a separator is '.', '_', "__" or a
/// run of '-'.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `label ('.' label)* (':' [0-9]+)?`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|x| x.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(is_domain_label)
}

/// `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn is_domain_label(l: &str) -> bool {
    let b = l.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(z)) => {
            f.is_ascii_alphanumeric()
                && z.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    b.first().is_some_and(|&f| word(f))
        && b.len() <= TAG_MAX
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm ':' [0-9a-fA-F]{32,}`, the algorithm
/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*`.
fn is_digest(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    hex.len() >= 32
        && hex.bytes().all(|x| x.is_ascii_hexdigit())
        && alg.split(['-', '_', '+', '.']).all(|part| {
            let b = part.as_bytes();
            b.first().is_some_and(u8::is_ascii_alphabetic)
                && b.iter().all(u8::is_ascii_alphanumeric)
        })
}

fn check_digest_length(d: &str) -> Result<(), RefError> {
    let (alg, hex) = d.split_once(':').ok_or(RefError::DigestFormat)?;
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(RefError::DigestUnsupported),
    };
    if hex.len() == want {
        Ok(())
    } else {
        Err(RefError::DigestLength)
    }
}

/// Docker's normalisation: a first component without '.' or ':' (and not
/// `localhost`) is a Docker Hub path; Hub's one-component names are under
/// `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((l, r)) if l.contains('.') || l.contains(':') || l == "localhost" => {
            (l.to_string(), r.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB.to_string();
    }
    if domain == DOCKER_HUB && !rest.contains('/') {
        rest = format!("{OFFICIAL_NAMESPACE}/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::prop_check;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    fn parts(r: &Reference) -> (String, String, Option<String>, Option<String>) {
        (
            r.registry().to_string(),
            r.repository().to_string(),
            r.tag().map(str::to_string),
            r.digest().map(str::to_string),
        )
    }

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Input, registry, repository, tag, digest.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    #[test]
    fn known_references() {
        let cases: &[Case] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "test.com:tag",
                "docker.io",
                "library/test.com",
                Some("tag"),
                None,
            ),
            (
                "test.com:5000",
                "docker.io",
                "library/test.com",
                Some("5000"),
                None,
            ),
            ("test.com/repo:tag", "test.com", "repo", Some("tag"), None),
            ("test:5000/repo", "test:5000", "repo", Some("latest"), None),
            ("localhost/x", "localhost", "x", Some("latest"), None),
            (
                "index.docker.io/foo",
                "docker.io",
                "library/foo",
                Some("latest"),
                None,
            ),
            (
                "docker.io/a/b/c:v1.2-x_y",
                "docker.io",
                "a/b/c",
                Some("v1.2-x_y"),
                None,
            ),
            (
                "10.77.42.2:5000/bench/mid:v1",
                "10.77.42.2:5000",
                "bench/mid",
                Some("v1"),
                None,
            ),
            (
                "a__b/c---d.e_f:t",
                "docker.io",
                "a__b/c---d.e_f",
                Some("t"),
                None,
            ),
        ];
        for (s, reg, repo, tag, dig) in cases {
            let r = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                parts(&r),
                (
                    reg.to_string(),
                    repo.to_string(),
                    tag.map(str::to_string),
                    dig.map(str::to_string)
                ),
                "{s}"
            );
        }
        let r = parse(&format!("r.io/x@{SHA}")).expect("digest reference");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(SHA));
        let r = parse(&format!("r.io/x:v@{SHA}")).expect("tag and digest");
        assert_eq!((r.tag(), r.digest()), (Some("v"), Some(SHA)));
    }

    #[test]
    fn rejected_references() {
        for s in [
            "",
            "Upper/x:y/z",
            "UPPER",
            "a//b",
            "a/",
            "/a",
            "a:",
            "a:-t",
            "a@sha256:abc",
            "a._b",
            "a___b",
            "-a",
            "a-",
            "a/b:c/d:e",
            "host:port/x",
            "a@b@c",
        ] {
            assert!(parse(s).is_err(), "{s:?} should not parse");
        }
        assert_eq!(
            parse(&format!("a@md5:{}", "0".repeat(32))).map(|_| ()),
            Err(RefError::DigestUnsupported)
        );
        assert_eq!(
            parse(&format!("a@sha256:{}", "0".repeat(40))).map(|_| ()),
            Err(RefError::DigestLength)
        );
        assert_eq!(
            parse(&format!("a:{}", "t".repeat(129))).map(|_| ()),
            Err(RefError::Format("the tag after ':' is malformed"))
        );
        assert_eq!(
            parse(&format!("x/{}", "a".repeat(255))).map(|_| ()),
            Err(RefError::NameTooLong)
        );
    }

    /// Strings close to the grammar: pieces that are often valid, joined by
    /// the grammar's punctuation.
    fn near_reference() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-z0-9]{1,4}",
            "[a-zA-Z0-9]{1,3}",
            Just("localhost".to_string()),
            Just("docker.io".to_string()),
            Just("index.docker.io".to_string()),
            Just("sha256".to_string()),
            Just("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_string()),
            Just("0123456789abcdef0123456789abcdef".to_string()),
            "[0-9]{1,5}",
        ];
        let punct = prop_oneof![
            Just(""),
            Just("/"),
            Just(":"),
            Just("@"),
            Just("."),
            Just("-"),
            Just("--"),
            Just("_"),
            Just("__"),
            Just("___"),
            Just("+"),
        ];
        proptest::collection::vec((piece, punct), 1..7).prop_map(|v| {
            v.into_iter()
                .map(|(p, s)| format!("{p}{s}"))
                .collect::<String>()
        })
    }

    fn agrees(s: &str) -> Result<(), TestCaseError> {
        let ours = parse(s).map(|r| parts(&r));
        let theirs = Reference::try_from(s).map(|r| parts(&r));
        prop_assert_eq!(
            ours.is_ok(),
            theirs.is_ok(),
            "{:?}: ours {:?}, oci_spec {:?}",
            s,
            ours,
            theirs
        );
        if let (Ok(a), Ok(b)) = (ours, theirs) {
            prop_assert_eq!(a, b, "{:?}", s);
        }
        Ok(())
    }

    /// Same language and same parts as the registry client's parser, on
    /// strings close to the grammar.
    #[test]
    fn prop_reference_agrees_with_the_registry_clients_parser() {
        prop_check(
            "reference_agrees_near_grammar",
            4000,
            near_reference(),
            |s| agrees(&s),
        );
    }

    /// ... and on arbitrary printable ASCII.
    #[test]
    fn prop_reference_agrees_on_arbitrary_ascii() {
        prop_check("reference_agrees_ascii", 2000, "[ -~]{0,40}", |s| {
            agrees(&s)
        });
    }
}

//! Registry credentials, found the way the engines find them.
//!
//! A pull either carries credentials given on the command line, or asks for
//! the node's: Docker's `config.json` (what `docker login` writes: inline
//! `auth`, `credHelpers`, `credsStore`), then containerd's config (the CRI
//! plugin's `registry.configs."HOST".auth`, and `Authorization` headers in
//! the `hosts.toml` files under its `config_path`). The first source that
//! names the registry's host wins; none means an anonymous pull.

use crate::config::Config;
use crate::error::{Error, Result};
use base64::Engine;
use oci_client::secrets::RegistryAuth;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Which credentials a pull uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// None: an anonymous pull.
    Anonymous,
    /// Given by the caller (`nvtier pull --creds-file`).
    Given(RegistryAuth),
    /// The node's, looked up per registry host (see the module docs).
    Node,
}

/// The credentials a pull ends up with, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub auth: RegistryAuth,
    /// e.g. "docker config /root/.docker/config.json"; `None` = anonymous.
    pub source: Option<String>,
    /// The files looked at, for an error that names them.
    pub looked_in: Vec<PathBuf>,
}

impl Resolved {
    fn anonymous(looked_in: Vec<PathBuf>) -> Resolved {
        Resolved {
            auth: RegistryAuth::Anonymous,
            source: None,
            looked_in,
        }
    }
}

/// Resolve `creds` for `registry` (as `Reference::resolve_registry` names
/// it, e.g. `10.0.0.2:5000` or `index.docker.io`).
pub fn resolve(cfg: &Config, creds: &Credentials, registry: &str) -> Result<Resolved> {
    match creds {
        Credentials::Anonymous => Ok(Resolved::anonymous(Vec::new())),
        Credentials::Given(a) => Ok(Resolved {
            auth: a.clone(),
            source: Some("the command line".into()),
            looked_in: Vec::new(),
        }),
        Credentials::Node => node_credentials(cfg, registry),
    }
}

fn node_credentials(cfg: &Config, registry: &str) -> Result<Resolved> {
    let mut looked_in = Vec::new();
    if let Some(path) = &cfg.docker_config {
        looked_in.push(path.clone());
        if let Some(auth) = from_docker_config(path, registry, &HelperRunner)? {
            return Ok(Resolved {
                auth,
                source: Some(format!("docker config {}", path.display())),
                looked_in,
            });
        }
    }
    if let Some(path) = &cfg.containerd_config {
        looked_in.push(path.clone());
        if let Some((auth, from)) = from_containerd_config(path, registry)? {
            return Ok(Resolved {
                auth,
                source: Some(format!("containerd config {}", from.display())),
                looked_in,
            });
        }
    }
    Ok(Resolved::anonymous(looked_in))
}

/// Docker Hub goes by several names; Docker keys it by its v1 URL.
const HUB_KEY: &str = "https://index.docker.io/v1/";

fn is_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// The host part of a `config.json` key: `https://h:1/v1/` -> `h:1`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn same_host(key: &str, registry: &str) -> bool {
    let h = key_host(key);
    h == registry || (is_hub(h) && is_hub(registry))
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Config {
        file: path.to_path_buf(),
        msg: format!("registry credentials: {msg}"),
    }
}

/// A credentials file's text; `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(path, format!("cannot read: {e}"))),
    }
}

/// Runs `docker-credential-NAME get`; a trait so the parsing is tested
/// without a helper binary.
pub(crate) trait CredentialHelper {
    /// The helper's JSON answer, or `None` when it has no credentials for
    /// `server`.
    fn get(&self, name: &str, server: &str) -> std::result::Result<Option<String>, String>;
}

struct HelperRunner;

impl CredentialHelper for HelperRunner {
    fn get(&self, name: &str, server: &str) -> std::result::Result<Option<String>, String> {
        let bin = format!("docker-credential-{name}");
        let mut child = Command::new(&bin)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e} (is it installed and on PATH?)"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(server.as_bytes())
                .map_err(|e| format!("{bin}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{bin}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(Some(stdout));
        }
        // The helper protocol's answer for "no entry".
        let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if text.contains("credentials not found") {
            return Ok(None);
        }
        Err(format!("{bin} get failed: {}", text.trim()))
    }
}

/// Credentials for `registry` from a Docker `config.json`; a missing file
/// is no credentials, an unreadable or malformed one is an error that
/// names it.
pub(crate) fn from_docker_config(
    path: &Path,
    registry: &str,
    helpers: &dyn CredentialHelper,
) -> Result<Option<RegistryAuth>> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
    let server = if is_hub(registry) {
        HUB_KEY.to_string()
    } else {
        registry.to_string()
    };
    let helper = v
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| h.iter().find(|(k, _)| same_host(k, registry)))
        .and_then(|(_, n)| n.as_str())
        .or_else(|| v.get("credsStore").and_then(|s| s.as_str()))
        .filter(|n| !n.is_empty());
    if let Some(name) = helper {
        let Some(answer) = helpers.get(name, &server).map_err(|e| bad(path, e))? else {
            return Ok(None);
        };
        let a: serde_json::Value = serde_json::from_str(&answer).map_err(|e| {
            bad(
                path,
                format!("docker-credential-{name} answered with no JSON: {e}"),
            )
        })?;
        let user = a.get("Username").and_then(|u| u.as_str()).unwrap_or("");
        let secret = a.get("Secret").and_then(|u| u.as_str()).unwrap_or("");
        if user == "<token>" {
            return Err(bad(
                path,
                format!(
                    "docker-credential-{name} holds an identity token for {registry}; nvtier \
                     needs a user name and password (log in with them, or give `nvtier pull \
                     --creds-file`)"
                ),
            ));
        }
        if user.is_empty() && secret.is_empty() {
            return Ok(None);
        }
        return Ok(Some(RegistryAuth::Basic(user.into(), secret.into())));
    }
    let Some(entry) = v
        .get("auths")
        .and_then(|a| a.as_object())
        .and_then(|a| a.iter().find(|(k, _)| same_host(k, registry)))
        .map(|(_, e)| e)
    else {
        return Ok(None);
    };
    basic_from_entry(entry, "auth", "username", "password", "identitytoken")
        .map_err(|e| bad(path, format!("entry for {registry}: {e}")))
}

/// An `auth` (base64 `user:password`) or `username` + `password` entry.
fn basic_from_entry(
    entry: &serde_json::Value,
    auth_key: &str,
    user_key: &str,
    pass_key: &str,
    token_key: &str,
) -> std::result::Result<Option<RegistryAuth>, String> {
    let s = |k: &str| {
        entry
            .get(k)
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
    };
    if let Some(b64) = s(auth_key) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("`{auth_key}` is not base64: {e}"))?;
        let text = String::from_utf8(raw).map_err(|_| format!("`{auth_key}` is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| format!("`{auth_key}` does not decode to USER:PASSWORD"))?;
        return Ok(Some(RegistryAuth::Basic(u.into(), p.into())));
    }
    if let (Some(u), Some(p)) = (s(user_key), s(pass_key)) {
        return Ok(Some(RegistryAuth::Basic(u.into(), p.into())));
    }
    if s(token_key).is_some() {
        return Err(format!(
            "only an identity token is stored (`{token_key}`); nvtier needs a user name and password"
        ));
    }
    Ok(None)
}

/// The CRI plugin's table in containerd 1.x and 2.x configs.
const CRI_TABLES: [&str; 2] = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"];

/// Credentials for `registry` from containerd's config: the CRI plugin's
/// `registry.configs."HOST".auth`, then an `Authorization` header in
/// `<config_path>/HOST/hosts.toml`. Returns the file they came from.
pub(crate) fn from_containerd_config(
    path: &Path,
    registry: &str,
) -> Result<Option<(RegistryAuth, PathBuf)>> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let v: toml::Value =
        toml::from_str(&text).map_err(|e| bad(path, format!("not valid TOML: {e}")))?;
    let mut config_paths = Vec::new();
    for t in CRI_TABLES {
        let Some(reg) = v
            .get("plugins")
            .and_then(|p| p.get(t))
            .and_then(|c| c.get("registry"))
        else {
            continue;
        };
        if let Some(entry) = reg
            .get("configs")
            .and_then(|c| c.as_table())
            .and_then(|c| c.iter().find(|(k, _)| same_host(k, registry)))
            .and_then(|(_, e)| e.get("auth"))
        {
            let json = serde_json::to_value(entry)
                .map_err(|e| bad(path, format!("registry.configs.{registry}.auth: {e}")))?;
            if let Some(a) =
                basic_from_entry(&json, "auth", "username", "password", "identitytoken")
                    .map_err(|e| bad(path, format!("registry.configs.{registry}.auth: {e}")))?
            {
                return Ok(Some((a, path.to_path_buf())));
            }
        }
        if let Some(p) = reg.get("config_path").and_then(|p| p.as_str()) {
            config_paths.extend(p.split(':').filter(|p| !p.is_empty()).map(PathBuf::from));
        }
    }
    for dir in config_paths {
        let hosts = dir.join(registry).join("hosts.toml");
        if let Some(a) = from_hosts_toml(&hosts)? {
            return Ok(Some((a, hosts)));
        }
    }
    Ok(None)
}

/// An `Authorization: Basic|Bearer` header in a containerd `hosts.toml`
/// (top-level `[header]` or the first `[host."…".header]` that has one).
fn from_hosts_toml(path: &Path) -> Result<Option<RegistryAuth>> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let v: toml::Value =
        toml::from_str(&text).map_err(|e| bad(path, format!("not valid TOML: {e}")))?;
    let header_of = |t: &toml::Value| -> Option<String> {
        let h = t.get("header")?.as_table()?;
        let (_, val) = h
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?;
        match val {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Array(a) => a.first()?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let header = header_of(&v).or_else(|| {
        v.get("host")
            .and_then(|h| h.as_table())
            .and_then(|h| h.values().find_map(header_of))
    });
    let Some(header) = header else {
        return Ok(None);
    };
    let header = header.trim();
    if let Some(b64) = header.strip_prefix("Basic ") {
        let entry = serde_json::json!({ "auth": b64 });
        return basic_from_entry(&entry, "auth", "", "", "")
            .map_err(|e| bad(path, format!("Authorization header: {e}")));
    }
    if let Some(token) = header.strip_prefix("Bearer ") {
        return Ok(Some(RegistryAuth::Bearer(token.trim().to_string())));
    }
    Err(bad(
        path,
        "the Authorization header is neither `Basic …` nor `Bearer …`",
    ))
}

/// `USER:PASSWORD` from a file's first line (or stdin for `-`), so the
/// password never appears in a command line.
pub fn read_creds_file(path: &Path) -> Result<RegistryAuth> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .map_err(|e| Error::Other(format!("reading credentials from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            Error::Other(format!(
                "cannot read credentials file {}: {e}",
                path.display()
            ))
        })?
    };
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    let (u, p) = line.split_once(':').ok_or_else(|| {
        Error::Other(format!(
            "credentials in {} must be one line USER:PASSWORD",
            if path == Path::new("-") {
                "stdin".to_string()
            } else {
                path.display().to_string()
            }
        ))
    })?;
    if u.is_empty() {
        return Err(Error::Other("the credentials' user name is empty".into()));
    }
    Ok(RegistryAuth::Basic(u.into(), p.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct FakeHelpers(BTreeMap<(String, String), std::result::Result<Option<String>, String>>);

    impl CredentialHelper for FakeHelpers {
        fn get(&self, name: &str, server: &str) -> std::result::Result<Option<String>, String> {
            self.0
                .get(&(name.to_string(), server.to_string()))
                .cloned()
                .unwrap_or(Ok(None))
        }
    }

    fn none() -> FakeHelpers {
        FakeHelpers(BTreeMap::new())
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("dir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic(u.into(), p.into())
    }

    #[test]
    fn docker_config_inline_auth_by_host() {
        let d = tempfile::tempdir().expect("tmp");
        let text = format!(
            r#"{{"auths": {{
                "10.0.0.2:5000": {{"auth": "{}"}},
                "http://10.0.0.3:5000/": {{"username": "bob", "password": "pw:with:colons"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "10.0.0.4:5000": {{"identitytoken": "tok"}},
                "10.0.0.5:5000": {{"auth": "!!!"}},
                "10.0.0.6:5000": {{}}
            }}}}"#,
            b64("alice:s3cret:x"),
            b64("hub:hubpw")
        );
        let p = write(d.path(), "config.json", &text);
        let get = |r: &str| from_docker_config(&p, r, &none());
        assert_eq!(
            get("10.0.0.2:5000").expect("ok"),
            Some(basic("alice", "s3cret:x"))
        );
        assert_eq!(
            get("10.0.0.3:5000").expect("ok"),
            Some(basic("bob", "pw:with:colons"))
        );
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(get(hub).expect("ok"), Some(basic("hub", "hubpw")), "{hub}");
        }
        // Another port is another registry.
        assert_eq!(get("10.0.0.2:5001").expect("ok"), None);
        assert_eq!(get("10.0.0.6:5000").expect("ok"), None);
        let e = get("10.0.0.4:5000").expect_err("token only");
        assert!(e.to_string().contains("identity token"), "{e}");
        assert!(e.to_string().contains("config.json"), "{e}");
        let e = get("10.0.0.5:5000").expect_err("bad base64");
        assert!(e.to_string().contains("base64"), "{e}");
    }

    #[test]
    fn docker_config_helpers() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write(
            d.path(),
            "config.json",
            r#"{"auths": {"10.0.0.2:5000": {}, "10.0.0.9:5000": {"auth": "eDp5"}},
                "credsStore": "store",
                "credHelpers": {"10.0.0.3:5000": "special"}}"#,
        );
        let mut m = BTreeMap::new();
        m.insert(
            ("store".into(), "10.0.0.2:5000".into()),
            Ok(Some(
                r#"{"ServerURL":"10.0.0.2:5000","Username":"u","Secret":"p"}"#.into(),
            )),
        );
        m.insert(
            ("special".into(), "10.0.0.3:5000".into()),
            Ok(Some(r#"{"Username":"v","Secret":"q"}"#.into())),
        );
        m.insert(
            ("store".into(), HUB_KEY.into()),
            Ok(Some(r#"{"Username":"<token>","Secret":"t"}"#.into())),
        );
        m.insert(
            ("store".into(), "10.0.0.7:5000".into()),
            Err("docker-credential-store get failed: boom".into()),
        );
        m.insert(
            ("store".into(), "10.0.0.8:5000".into()),
            Ok(Some("not json".into())),
        );
        let h = FakeHelpers(m);
        let get = |r: &str| from_docker_config(&p, r, &h);
        assert_eq!(get("10.0.0.2:5000").expect("ok"), Some(basic("u", "p")));
        assert_eq!(get("10.0.0.3:5000").expect("ok"), Some(basic("v", "q")));
        // credsStore takes every host, inline auth included (as Docker).
        assert_eq!(get("10.0.0.9:5000").expect("ok"), None);
        assert!(get("docker.io")
            .expect_err("token")
            .to_string()
            .contains("identity token"));
        assert!(get("10.0.0.7:5000")
            .expect_err("fails")
            .to_string()
            .contains("boom"));
        assert!(get("10.0.0.8:5000")
            .expect_err("no json")
            .to_string()
            .contains("no JSON"));
    }

    #[test]
    fn docker_config_missing_or_broken() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(
            from_docker_config(&d.path().join("nope.json"), "h:1", &none()).expect("missing"),
            None
        );
        let p = write(d.path(), "config.json", "{not json");
        let e = from_docker_config(&p, "h:1", &none()).expect_err("broken");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn containerd_cri_registry_configs() {
        let d = tempfile::tempdir().expect("tmp");
        let hosts = d.path().join("certs.d");
        let cfg = write(
            d.path(),
            "config.toml",
            &format!(
                r#"version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{}"
[plugins."io.containerd.grpc.v1.cri".registry.configs."10.0.0.2:5000".auth]
  username = "cu"
  password = "cp"
[plugins."io.containerd.grpc.v1.cri".registry.configs."10.0.0.3:5000".auth]
  auth = "{}"
[plugins."io.containerd.grpc.v1.cri".registry.configs."10.0.0.3:5000".tls]
  insecure_skip_verify = true
"#,
                hosts.display(),
                b64("du:dp")
            ),
        );
        write(
            &hosts,
            "10.0.0.4:5000/hosts.toml",
            &format!(
                "server = \"http://10.0.0.4:5000\"\n[host.\"http://10.0.0.4:5000\"]\n  capabilities = [\"pull\"]\n  [host.\"http://10.0.0.4:5000\".header]\n    Authorization = \"Basic {}\"\n",
                b64("hu:hp")
            ),
        );
        write(
            &hosts,
            "10.0.0.5:5000/hosts.toml",
            "[header]\n  authorization = [\"Bearer abc\"]\n",
        );
        write(
            &hosts,
            "10.0.0.6:5000/hosts.toml",
            "[header]\n  Authorization = \"Digest x\"\n",
        );
        let get = |r: &str| from_containerd_config(&cfg, r);
        let (a, from) = get("10.0.0.2:5000").expect("ok").expect("some");
        assert_eq!((a, from), (basic("cu", "cp"), cfg.clone()));
        assert_eq!(
            get("10.0.0.3:5000").expect("ok").expect("some").0,
            basic("du", "dp")
        );
        let (a, from) = get("10.0.0.4:5000").expect("ok").expect("some");
        assert_eq!(a, basic("hu", "hp"));
        assert!(
            from.ends_with("10.0.0.4:5000/hosts.toml"),
            "{}",
            from.display()
        );
        assert_eq!(
            get("10.0.0.5:5000").expect("ok").expect("some").0,
            RegistryAuth::Bearer("abc".into())
        );
        assert!(get("10.0.0.6:5000")
            .expect_err("digest")
            .to_string()
            .contains("Authorization"));
        assert_eq!(get("10.0.0.7:5000").expect("ok"), None);
        // containerd 2.x's table.
        let cfg2 = write(
            d.path(),
            "config2.toml",
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry.configs.\"10.0.0.2:5000\".auth]\n  username = \"x\"\n  password = \"y\"\n",
        );
        assert_eq!(
            from_containerd_config(&cfg2, "10.0.0.2:5000")
                .expect("ok")
                .expect("some")
                .0,
            basic("x", "y")
        );
        let broken = write(d.path(), "broken.toml", "[plugins\n");
        assert!(from_containerd_config(&broken, "h:1")
            .expect_err("broken")
            .to_string()
            .contains("broken.toml"));
    }

    #[test]
    fn node_order_docker_then_containerd() {
        let d = tempfile::tempdir().expect("tmp");
        let docker = write(
            d.path(),
            "docker.json",
            &format!(
                r#"{{"auths": {{"10.0.0.2:5000": {{"auth": "{}"}}}}}}"#,
                b64("d:1")
            ),
        );
        let ctd = write(
            d.path(),
            "ctd.toml",
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"10.0.0.2:5000\".auth]\n  username = \"c\"\n  password = \"2\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"10.0.0.3:5000\".auth]\n  username = \"c\"\n  password = \"3\"\n",
        );
        let (_t, store) = crate::testutil::temp_store("1M");
        let mut cfg = store.cfg.clone();
        cfg.docker_config = Some(docker.clone());
        cfg.containerd_config = Some(ctd.clone());
        let r = resolve(&cfg, &Credentials::Node, "10.0.0.2:5000").expect("ok");
        assert_eq!(r.auth, basic("d", "1"));
        assert!(r
            .source
            .as_deref()
            .is_some_and(|s| s.contains("docker.json")));
        let r = resolve(&cfg, &Credentials::Node, "10.0.0.3:5000").expect("ok");
        assert_eq!(r.auth, basic("c", "3"));
        let r = resolve(&cfg, &Credentials::Node, "10.0.0.4:5000").expect("ok");
        assert_eq!(r.auth, RegistryAuth::Anonymous);
        assert_eq!(r.source, None);
        assert_eq!(r.looked_in, vec![docker, ctd]);
        let r = resolve(&cfg, &Credentials::Anonymous, "10.0.0.2:5000").expect("ok");
        assert_eq!(r.auth, RegistryAuth::Anonymous);
        let r = resolve(&cfg, &Credentials::Given(basic("g", "h")), "10.0.0.2:5000").expect("ok");
        assert_eq!(r.auth, basic("g", "h"));
    }

    #[test]
    fn creds_file() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write(d.path(), "creds", "user:pa:ss\nignored\n");
        assert_eq!(read_creds_file(&p).expect("ok"), basic("user", "pa:ss"));
        let p = write(d.path(), "bad", "nocolon\n");
        assert!(read_creds_file(&p)
            .expect_err("bad")
            .to_string()
            .contains("USER:PASSWORD"));
        let p = write(d.path(), "empty-user", ":pw\n");
        assert!(read_creds_file(&p).is_err());
        assert!(read_creds_file(&d.path().join("missing")).is_err());
    }
}

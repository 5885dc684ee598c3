//! Image references and the registry client.

use super::auth::Resolved;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::Store;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::sync::Mutex;

/// Normalise a reference the way the store names images.
pub fn normalize(reference: &str) -> Result<String> {
    parse_ref(reference).map(|r| r.whole())
}

/// A client being built ahead of the pull that will use it, keyed by its
/// plain-HTTP registries (see [`warm_up`]).
type Prebuilt = (Vec<String>, std::thread::JoinHandle<Option<Client>>);
static PREBUILT: Mutex<Option<Prebuilt>> = Mutex::new(None);

/// Build the registry client for `reference` on a thread of its own, while
/// the store opens: the client's TLS set-up reads the system's CA
/// certificates (about 150 files) even for a plain-HTTP registry, about
/// 40 ms after a cache drop, which would otherwise come before the first
/// registry request. The next [`client_for`] with the same settings in this
/// process takes it. A command that will pull calls this first.
pub fn warm_up(cfg: &Config, reference: &str) {
    let Ok(r) = parse_ref(reference) else {
        return;
    };
    let plain = plain_registries(cfg, &r);
    let key = plain.clone();
    let built = std::thread::Builder::new()
        .name("nvtier-warm-up".into())
        .spawn(move || Client::try_from(client_config(plain)).ok());
    if let Ok(h) = built {
        *PREBUILT.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, h));
    }
}

/// Parse an image reference (see [`crate::reference`]).
pub(super) fn parse_ref(reference: &str) -> Result<Reference> {
    crate::reference::parse(reference).map_err(|e| Error::BadReference {
        reference: reference.to_string(),
        msg: e.to_string(),
    })
}

pub(super) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Registries spoken to in plain HTTP: the configured insecure ones, and
/// `reference`'s if it is on the loopback.
fn plain_registries(cfg: &Config, reference: &Reference) -> Vec<String> {
    let mut plain: Vec<String> = cfg.insecure_registries.clone();
    let reg = reference.resolve_registry().to_string();
    if is_loopback(&reg) {
        plain.push(reg);
    }
    plain
}

fn client_config(plain: Vec<String>) -> ClientConfig {
    ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    }
}

/// Clients already built in this process, by plain-HTTP registries and
/// credentials: `nvtier serve` pulls for the engines reuse one (its
/// connections and tokens) instead of setting up TLS again for each pull.
/// Tokens are never shared between different credentials.
type CacheKey = (Vec<String>, [u8; 32]);
static CLIENTS: Mutex<Vec<(CacheKey, Client)>> = Mutex::new(Vec::new());
const CLIENTS_KEPT: usize = 8;

fn auth_fingerprint(auth: &RegistryAuth) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    match auth {
        RegistryAuth::Anonymous => h.update(b"anonymous"),
        RegistryAuth::Basic(u, p) => {
            h.update(b"basic\0");
            h.update(u.as_bytes());
            h.update(b"\0");
            h.update(p.as_bytes());
        }
        RegistryAuth::Bearer(t) => {
            h.update(b"bearer\0");
            h.update(t.as_bytes());
        }
    }
    h.finalize().into()
}

/// The registry client for `reference` with `auth`. Its TLS set-up reads
/// the system's CA certificates even when the registry is plain HTTP;
/// without any, building it fails (and oci-client's `Client::new` would
/// fall back to a default client that panics), so that is an error that
/// names the fix.
pub(super) fn client_for(
    store: &Store,
    reference: &Reference,
    auth: &RegistryAuth,
) -> Result<Client> {
    let plain = plain_registries(&store.cfg, reference);
    let key = (plain.clone(), auth_fingerprint(auth));
    if let Some((_, c)) = CLIENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(k, _)| *k == key)
    {
        return Ok(c.clone());
    }
    let client = build_client(plain, reference)?;
    let mut cache = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= CLIENTS_KEPT {
        cache.remove(0);
    }
    cache.push((key, client.clone()));
    Ok(client)
}

fn build_client(plain: Vec<String>, reference: &Reference) -> Result<Client> {
    let prebuilt = PREBUILT.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((key, h)) = prebuilt {
        if key == plain {
            if let Ok(Some(c)) = h.join() {
                return Ok(c);
            }
        }
    }
    Client::try_from(client_config(plain))
    .map_err(|e| {
        Error::Registry(format!(
            "cannot set up the registry client for {}: {e} (its TLS set-up needs the system's CA \
             certificates, even for plain-HTTP registries: install them, e.g. `apt install ca-certificates`)",
            reference.whole()
        ))
    })
}

/// Does `e` say the registry wants (other) credentials?
pub(super) fn is_auth_error(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => matches!(code, 401 | 403),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

/// A registry error that names the fix: for a refusal, where credentials
/// were looked for (or which ones were refused).
pub(super) fn access_err(
    what: &str,
    reference: &Reference,
    creds: &Resolved,
    e: OciDistributionError,
) -> Error {
    if !is_auth_error(&e) {
        return registry_err(what, reference, e);
    }
    let registry = reference.resolve_registry().to_string();
    let fix = match &creds.source {
        Some(src) => format!(
            "the credentials from {src} were refused; log in again (`docker login {registry}`) or fix them there"
        ),
        None if creds.looked_in.is_empty() => format!(
            "no credentials were given; pass `--creds-file FILE` (USER:PASSWORD) or run `docker login {registry}`"
        ),
        None => format!(
            "nvtier found no credentials for {registry} (looked in {}); run `docker login {registry}` as the user nvtier runs as, add them to containerd's CRI registry config, or set `docker_config`",
            creds
                .looked_in
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Error::RegistryAuth {
        registry,
        image: reference.whole(),
        msg: format!("{what}: {e}; {fix}"),
    }
}

pub(super) fn registry_err(what: &str, reference: &Reference, e: impl std::fmt::Display) -> Error {
    Error::Registry(format!(
        "{what} {}: {e} (is the registry reachable? plain-HTTP registries must be listed in `insecure_registries`)",
        reference.whole()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.3.4.5"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.77.3.2:5000"));
        assert!(!is_loopback("registry.example.com"));
    }

    #[test]
    fn auth_errors_are_told_apart() {
        assert!(is_auth_error(&OciDistributionError::UnauthorizedError {
            url: "u".into()
        }));
        assert!(is_auth_error(&OciDistributionError::ServerError {
            code: 403,
            url: "u".into(),
            message: "m".into()
        }));
        assert!(!is_auth_error(&OciDistributionError::ServerError {
            code: 500,
            url: "u".into(),
            message: "m".into()
        }));
        let r = parse_ref("10.0.0.2:5000/app:v1").expect("ref");
        let none = Resolved {
            auth: oci_client::secrets::RegistryAuth::Anonymous,
            source: None,
            looked_in: vec!["/root/.docker/config.json".into()],
        };
        let e = access_err(
            "fetching manifest of",
            &r,
            &none,
            OciDistributionError::UnauthorizedError { url: "u".into() },
        );
        let t = e.to_string();
        assert!(matches!(e, Error::RegistryAuth { .. }), "{t}");
        assert!(t.contains("docker login 10.0.0.2:5000"), "{t}");
        assert!(t.contains("/root/.docker/config.json"), "{t}");
        let given = Resolved {
            source: Some("docker config /x.json".into()),
            ..none.clone()
        };
        let t = access_err(
            "fetching manifest of",
            &r,
            &given,
            OciDistributionError::AuthenticationFailure("bad".into()),
        )
        .to_string();
        assert!(t.contains("from docker config /x.json were refused"), "{t}");
        let other = access_err(
            "fetching manifest of",
            &r,
            &none,
            OciDistributionError::UrlParseError("x".into()),
        );
        assert!(matches!(other, Error::Registry(_)), "{other}");
    }

    #[test]
    fn references_normalise() {
        assert_eq!(
            normalize("10.0.0.2:5000/demo:v1").expect("ok"),
            "10.0.0.2:5000/demo:v1"
        );
        assert!(normalize("UPPER/Case").is_err());
    }
}

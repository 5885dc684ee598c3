//! Image references and the registry client.

use crate::error::{Error, Result};
use crate::store::Store;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};

/// Normalise a reference the way the store names images.
pub fn normalize(reference: &str) -> Result<String> {
    parse_ref(reference).map(|r| r.whole())
}

pub(super) fn parse_ref(reference: &str) -> Result<Reference> {
    Reference::try_from(reference).map_err(|e| Error::BadReference {
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

/// The registry client. Its TLS set-up reads the system's CA certificates
/// even when the registry is plain HTTP; without any, building it fails
/// (and oci-client's `Client::new` would fall back to a default client that
/// panics), so that is an error that names the fix.
pub(super) fn client_for(store: &Store, reference: &Reference) -> Result<Client> {
    let mut plain: Vec<String> = store.cfg.insecure_registries.clone();
    let reg = reference.resolve_registry().to_string();
    if is_loopback(&reg) {
        plain.push(reg);
    }
    Client::try_from(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
    .map_err(|e| {
        Error::Registry(format!(
            "cannot set up the registry client for {}: {e} (its TLS set-up needs the system's CA \
             certificates, even for plain-HTTP registries: install them, e.g. `apt install ca-certificates`)",
            reference.whole()
        ))
    })
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
    fn references_normalise() {
        assert_eq!(
            normalize("10.0.0.2:5000/demo:v1").expect("ok"),
            "10.0.0.2:5000/demo:v1"
        );
        assert!(normalize("UPPER/Case").is_err());
    }
}

//! Hot profiles in the registry, as OCI artifacts that refer to the image.
//!
//! A profile is an OCI image manifest with `artifactType`
//! [`PROFILE_ARTIFACT_TYPE`], the empty config, one layer (the
//! [`PortableProfile`] JSON) and `subject` = the image's (platform)
//! manifest. Pulls find it through the referrers API; registries without
//! that API (docker-registry 2.8, for one) get the referrers tag schema:
//! an image index at tag `sha256-<hex of the subject>` that lists the
//! referrers, which the pusher keeps up to date.

use super::auth::{self, Credentials};
use super::registry::{access_err, client_for, parse_ref, registry_err};
use crate::error::{Error, Result};
use crate::store::profiles::{
    load_profile, PortableProfile, MAX_PORTABLE_BYTES, PROFILE_ARTIFACT_TYPE,
};
use crate::store::Store;
use futures_util::StreamExt;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Serialize;
use sha2::Digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// sha256 of `{}`, the OCI empty descriptor's content.
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
const CREATED: &str = "org.opencontainers.image.created";
/// The most profile artifacts a lookup tries, newest first.
const MAX_CANDIDATES: usize = 8;

/// Where a profile is pushed.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// `HOST/REPO` to push to (default: `profiles_repo`, else the image's
    /// own repository).
    pub repo: Option<String>,
    pub auth: Credentials,
}

/// What `nvtier profile push` did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub image: String,
    /// `HOST/REPO` the artifact went to.
    pub repository: String,
    pub artifact_digest: String,
    /// The image manifest the artifact refers to.
    pub subject_digest: String,
    /// `referrers` (the registry lists it) or `tag-schema` (the registry
    /// lacks the referrers API; the index at `sha256-<hex>` was updated).
    pub method: String,
    pub files: usize,
    pub bytes: u64,
}

/// A profile found in the registry for an image.
#[derive(Debug, Clone)]
pub struct Found {
    pub profile: PortableProfile,
    pub artifact_digest: String,
    pub repository: String,
}

/// `HOST/REPO` of a reference.
fn repo_of(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// A reference to `digest` in `repo` (`HOST/REPO`).
fn in_repo(repo: &str, digest: &str) -> Result<Reference> {
    let base = parse_ref(&format!("{repo}:latest"))?;
    Ok(Reference::with_digest(
        base.registry().to_string(),
        base.repository().to_string(),
        digest.to_string(),
    ))
}

/// Push `image`'s profile (its portable part) to the registry.
pub async fn push_profile(store: &Store, image: &str, opts: &PushOptions) -> Result<PushReport> {
    let rec = store
        .image(image)?
        .ok_or_else(|| Error::ImageNotFound(image.to_string()))?;
    let profile = load_profile(store, image)?.ok_or_else(|| {
        Error::Other(format!(
            "no profile for {image}: record one first (`nvtier trace {image} -- CMD`)"
        ))
    })?;
    let portable = PortableProfile::of(&profile);
    let body = portable.to_json()?;
    let image_ref = parse_ref(image)?;
    let subject_ref = Reference::with_digest(
        image_ref.registry().to_string(),
        image_ref.repository().to_string(),
        rec.manifest_digest.clone(),
    );
    let repo = opts
        .repo
        .clone()
        .or_else(|| store.cfg.profiles_repo.clone())
        .unwrap_or_else(|| repo_of(&image_ref));
    let creds = auth::resolve(&store.cfg, &opts.auth, subject_ref.resolve_registry())?;
    let client = client_for(store, &subject_ref, &creds.auth)?;
    // The subject descriptor needs the manifest's media type and size.
    let (raw, _) = client
        .pull_manifest_raw(&subject_ref, &creds.auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
        .await
        .map_err(|e| access_err("fetching the image manifest", &subject_ref, &creds, e))?;
    let subject_type = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let target = in_repo(&repo, &rec.manifest_digest)?;
    let tcreds = auth::resolve(&store.cfg, &opts.auth, target.resolve_registry())?;
    let tclient = client_for(store, &target, &tcreds.auth)?;
    tclient
        .auth(&target, &tcreds.auth, RegistryOperation::Push)
        .await
        .map_err(|e| access_err("authenticating to push to", &target, &tcreds, e))?;
    let blob_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    tclient
        .push_blob(&target, b"{}".to_vec(), EMPTY_DIGEST)
        .await
        .map_err(|e| access_err("pushing the empty config to", &target, &tcreds, e))?;
    tclient
        .push_blob(&target, body.clone(), &blob_digest)
        .await
        .map_err(|e| access_err("pushing the profile to", &target, &tcreds, e))?;
    let created = rfc3339(crate::store::now_ms());
    let annotations = serde_json::json!({
        CREATED: created,
        "io.nvtier.profile.files": portable.files.len().to_string(),
        "io.nvtier.profile.bytes": profile.total_bytes().to_string(),
        "io.nvtier.profile.runs": portable.runs.to_string(),
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": PROFILE_ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": 2},
        "layers": [{"mediaType": PROFILE_ARTIFACT_TYPE, "digest": blob_digest, "size": body.len()}],
        "subject": {"mediaType": subject_type, "digest": rec.manifest_digest, "size": raw.len()},
        "annotations": annotations,
    });
    let mbytes = serde_json::to_vec(&manifest).map_err(|e| Error::Other(e.to_string()))?;
    let artifact_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&mbytes)));
    let artifact_ref = in_repo(&repo, &artifact_digest)?;
    tclient
        .push_manifest_raw(
            &artifact_ref,
            mbytes.clone(),
            http::HeaderValue::from_static(OCI_MANIFEST),
        )
        .await
        .map_err(|e| access_err("pushing the profile manifest to", &artifact_ref, &tcreds, e))?;
    // Listed by the registry's referrers API? Otherwise keep the
    // referrers tag schema's index up to date.
    let listed = tclient
        .pull_referrers(&target, Some(PROFILE_ARTIFACT_TYPE))
        .await
        .map(|idx| idx.manifests.iter().any(|m| m.digest == artifact_digest))
        .unwrap_or(false);
    let method = if listed {
        "referrers"
    } else {
        let entry = serde_json::json!({
            "mediaType": OCI_MANIFEST,
            "digest": artifact_digest,
            "size": mbytes.len(),
            "artifactType": PROFILE_ARTIFACT_TYPE,
            "annotations": manifest["annotations"],
        });
        update_tag_index(&tclient, &target, &tcreds, entry).await?;
        "tag-schema"
    };
    tracing::info!(image, repository = %repo, artifact = %artifact_digest, method, "profile pushed");
    Ok(PushReport {
        image: image.to_string(),
        repository: repo,
        artifact_digest,
        subject_digest: rec.manifest_digest,
        method: method.into(),
        files: portable.files.len(),
        bytes: profile.total_bytes(),
    })
}

/// Add `entry` to the referrers tag schema's index of `subject` (created
/// when missing). Concurrent pushers can lose each other's entry; the
/// artifact itself stays in the registry.
async fn update_tag_index(
    client: &Client,
    subject: &Reference,
    creds: &auth::Resolved,
    entry: serde_json::Value,
) -> Result<()> {
    let digest = subject
        .digest()
        .ok_or_else(|| Error::Other("the subject has no digest".into()))?;
    let tag_ref = Reference::with_tag(
        subject.registry().to_string(),
        subject.repository().to_string(),
        digest.replace(':', "-"),
    );
    let mut index = match client
        .pull_manifest_raw(&tag_ref, &creds.auth, &[OCI_INDEX])
        .await
    {
        Ok((raw, _)) => serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .filter(|v| v.get("manifests").is_some_and(|m| m.is_array()))
            .ok_or_else(|| {
                Error::Other(format!(
                    "the referrers index at {} is not an image index; not changed",
                    tag_ref.whole()
                ))
            })?,
        Err(e) if is_not_found(&e) => {
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        }
        Err(e) => {
            return Err(access_err(
                "reading the referrers index",
                &tag_ref,
                creds,
                e,
            ))
        }
    };
    if let Some(m) = index.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        m.retain(|x| x.get("digest") != entry.get("digest"));
        m.push(entry);
    }
    let body = serde_json::to_vec(&index).map_err(|e| Error::Other(e.to_string()))?;
    client
        .push_manifest_raw(&tag_ref, body, http::HeaderValue::from_static(OCI_INDEX))
        .await
        .map_err(|e| access_err("updating the referrers index", &tag_ref, creds, e))?;
    Ok(())
}

fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode};
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}

/// The newest valid profile artifact for the image manifest `digest` of
/// `image_ref`: in its own repository, then in `profiles_repo`. Invalid
/// artifacts are skipped with a log line; registry errors end the lookup
/// (a pull never fails for want of a profile).
pub async fn lookup(
    store: &Store,
    client: &Client,
    image_ref: &Reference,
    digest: &str,
    diff_ids: &[String],
    auth: &RegistryAuth,
) -> Option<Found> {
    let mut repos = vec![repo_of(image_ref)];
    if let Some(r) = &store.cfg.profiles_repo {
        if !repos.contains(r) {
            repos.push(r.clone());
        }
    }
    for repo in repos {
        match lookup_in(client, &repo, digest, diff_ids, auth).await {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(image = %image_ref.whole(), repository = %repo, error = %e, "looking up profiles in the registry");
            }
        }
    }
    None
}

async fn lookup_in(
    client: &Client,
    repo: &str,
    digest: &str,
    diff_ids: &[String],
    auth: &RegistryAuth,
) -> Result<Option<Found>> {
    let subject = in_repo(repo, digest)?;
    // The client needs the credentials of this registry stored.
    client
        .store_auth_if_needed(subject.resolve_registry(), auth)
        .await;
    let index = client
        .pull_referrers(&subject, Some(PROFILE_ARTIFACT_TYPE))
        .await
        .map_err(|e| registry_err("listing the referrers of", &subject, e))?;
    let mut cands: Vec<(String, String)> = index
        .manifests
        .iter()
        .filter(|m| m.artifact_type.as_deref() == Some(PROFILE_ARTIFACT_TYPE))
        .map(|m| {
            let created = m
                .annotations
                .as_ref()
                .and_then(|a| a.get(CREATED))
                .cloned()
                .unwrap_or_default();
            (created, m.digest.clone())
        })
        .collect();
    // Newest first (RFC 3339 in UTC sorts as text).
    cands.sort_by(|a, b| b.cmp(a));
    cands.dedup_by(|a, b| a.1 == b.1);
    for (_, adigest) in cands.into_iter().take(MAX_CANDIDATES) {
        let r = fetch_artifact(client, repo, &adigest, digest, auth)
            .await
            .and_then(|p| {
                if p.diff_ids == diff_ids {
                    Ok(p)
                } else {
                    Err(Error::Other(
                        "the profile is for other layers than the image's".into(),
                    ))
                }
            });
        match r {
            Ok(profile) => {
                return Ok(Some(Found {
                    profile,
                    artifact_digest: adigest,
                    repository: repo.to_string(),
                }))
            }
            Err(e) => {
                tracing::warn!(repository = %repo, artifact = %adigest, error = %e, "skipping an invalid profile artifact")
            }
        }
    }
    Ok(None)
}

async fn fetch_artifact(
    client: &Client,
    repo: &str,
    adigest: &str,
    subject: &str,
    auth: &RegistryAuth,
) -> Result<PortableProfile> {
    let aref = in_repo(repo, adigest)?;
    let (raw, _) = client
        .pull_manifest_raw(&aref, auth, &[OCI_MANIFEST])
        .await
        .map_err(|e| registry_err("fetching the profile manifest", &aref, e))?;
    let m: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| Error::Other(format!("the profile manifest is not JSON: {e}")))?;
    if m.get("artifactType").and_then(|a| a.as_str()) != Some(PROFILE_ARTIFACT_TYPE) {
        return Err(Error::Other("not a profile artifact".into()));
    }
    if m.pointer("/subject/digest").and_then(|d| d.as_str()) != Some(subject) {
        return Err(Error::Other("it refers to another image".into()));
    }
    let layer = m
        .pointer("/layers/0")
        .ok_or_else(|| Error::Other("the profile manifest has no layer".into()))?;
    let ldigest = layer
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or_else(|| Error::Other("the profile layer has no digest".into()))?
        .to_string();
    let lsize = layer
        .get("size")
        .and_then(|s| s.as_u64())
        .unwrap_or(u64::MAX);
    if layer.get("mediaType").and_then(|t| t.as_str()) != Some(PROFILE_ARTIFACT_TYPE) {
        return Err(Error::Other(
            "the profile layer has another media type".into(),
        ));
    }
    if lsize > MAX_PORTABLE_BYTES {
        return Err(Error::Other(format!(
            "the profile is {lsize} bytes; the limit is {MAX_PORTABLE_BYTES}"
        )));
    }
    let desc = OciDescriptor {
        media_type: PROFILE_ARTIFACT_TYPE.into(),
        digest: ldigest.clone(),
        size: lsize as i64,
        ..Default::default()
    };
    let mut stream = client
        .pull_blob_stream(&aref, &desc)
        .await
        .map_err(|e| registry_err("fetching the profile of", &aref, e))?;
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| registry_err("fetching the profile of", &aref, e))?;
        body.extend_from_slice(&chunk);
        if body.len() as u64 > lsize.min(MAX_PORTABLE_BYTES) {
            return Err(Error::Other(
                "the profile blob is larger than its descriptor".into(),
            ));
        }
    }
    let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    if got != ldigest {
        return Err(Error::Digest {
            what: format!("profile blob of {}", aref.whole()),
            expected: ldigest,
            actual: got,
        });
    }
    PortableProfile::from_json(&body)
}

/// `2026-11-30T23:59:01.007Z` for Unix milliseconds (UTC).
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_083_141_007), "2026-11-30T23:59:01.007Z");
        // Text order is time order.
        assert!(rfc3339(1_796_083_141_007) > rfc3339(1_796_083_140_999));
    }

    #[test]
    fn empty_digest_is_that_of_the_empty_object() {
        assert_eq!(
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"{}"))),
            EMPTY_DIGEST
        );
    }

    #[test]
    fn repo_references() {
        let r = in_repo("10.0.0.2:5000/team/profiles", "sha256:ab").expect("ref");
        assert_eq!(r.registry(), "10.0.0.2:5000");
        assert_eq!(r.repository(), "team/profiles");
        assert_eq!(r.digest(), Some("sha256:ab"));
        assert_eq!(repo_of(&r), "10.0.0.2:5000/team/profiles");
    }
}

//! Profile publishing (`profile_push = true`): the daemon pushes an
//! image's profile to the registry whenever its portable content changed
//! since the last push (`nvtier trace`, `profile import`, a recording), so
//! that pulls on other nodes place the hot files at once.
//!
//! What was pushed is remembered per image in
//! `STATE/profiles-pushed/<sha256(image)>` (the sha256 of the portable
//! profile), so a restart pushes nothing twice.

use crate::error::{IoContext, Result};
use crate::fsutil::write_atomic;
use crate::pull::profile_artifact::{push_profile, PushOptions};
use crate::pull::Credentials;
use crate::store::profiles::{load_profile, PortableProfile};
use crate::store::Store;
use sha2::Digest;
use std::path::PathBuf;

fn marker(store: &Store, image: &str) -> PathBuf {
    store
        .state()
        .join("profiles-pushed")
        .join(hex::encode(sha2::Sha256::digest(image.as_bytes())))
}

/// The images whose profile differs from what was pushed last, with the
/// hash of the profile to push.
pub fn pending(store: &Store) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for img in store.images()? {
        let Some(p) = load_profile(store, &img.name)? else {
            continue;
        };
        let hash = hex::encode(sha2::Sha256::digest(PortableProfile::of(&p).to_json()?));
        let path = marker(store, &img.name);
        let pushed = std::fs::read_to_string(&path).unwrap_or_default();
        if pushed.trim() != hash {
            out.push((img.name, hash));
        }
    }
    Ok(out)
}

fn mark(store: &Store, image: &str, hash: &str) -> Result<()> {
    let path = marker(store, image);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    write_atomic(&path, hash.as_bytes())
}

/// Every `migrate_interval_s` (at least 5 s): push changed profiles.
/// Failures are logged and retried at the next round.
pub async fn publish_loop(store: Store, rx: &mut tokio::sync::watch::Receiver<bool>) {
    let every = std::time::Duration::from_secs(store.cfg.migrate_interval_s.max(5));
    tracing::info!(
        every_s = every.as_secs(),
        "profile publishing on (profile_push = true)"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = rx.wait_for(|v| *v) => return,
        }
        let s2 = store.clone();
        let todo = match tokio::task::spawn_blocking(move || pending(&s2)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "listing profiles to publish");
                continue;
            }
            Err(_) => continue,
        };
        for (image, hash) in todo {
            let opts = PushOptions {
                repo: None,
                auth: Credentials::Node,
            };
            let r = push_profile(&store, &image, &opts).await;
            super::metrics::metrics().profile_push(r.is_ok());
            match r {
                Ok(rep) => {
                    if let Err(e) = mark(&store, &image, &hash) {
                        tracing::warn!(%image, error = %e, "remembering the pushed profile");
                    }
                    tracing::info!(%image, artifact = %rep.artifact_digest, repository = %rep.repository, method = %rep.method, "published the profile");
                }
                Err(e) => {
                    tracing::warn!(%image, error = %e, "publishing the profile failed; retrying later")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_until_marked_and_again_when_changed() {
        let (_d, store) = crate::testutil::temp_store("1M");
        let img = crate::testutil::image_record("r/a:1", &["sha256:d0"], &["sha256:c0"]);
        store.put_image(&img).expect("image");
        assert!(
            pending(&store).expect("pending").is_empty(),
            "no profile yet"
        );
        let mut p = nvtier_tracer::Profile {
            image: "r/a:1".into(),
            diff_ids: img.diff_ids.clone(),
            tracer: "ebpf".into(),
            runs: 1,
            lost_events: 0,
            files: Vec::new(),
        };
        crate::store::profiles::save_profile(&store, &p).expect("save");
        let todo = pending(&store).expect("pending");
        assert_eq!(todo.len(), 1);
        mark(&store, &todo[0].0, &todo[0].1).expect("mark");
        assert!(pending(&store).expect("pending").is_empty());
        // Lost events are not portable: no new push.
        p.lost_events = 9;
        crate::store::profiles::save_profile(&store, &p).expect("save");
        assert!(pending(&store).expect("pending").is_empty());
        p.runs = 2;
        crate::store::profiles::save_profile(&store, &p).expect("save");
        assert_eq!(pending(&store).expect("pending").len(), 1);
    }
}

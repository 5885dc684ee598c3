//! Root integration tests of hot profiles in the registry, on two "nodes"
//! (two testbeds with their own tiers and state; node B pulls from node
//! A's registry): a profile recorded and pushed on A makes B's first pull
//! place the hot files on pmem, with no trace and no migration on B.

mod common;
mod engines;

use common::{listing, reference_rootfs, Bed};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;

/// The cold start: reads two small files and one large one.
const READS: &str = "cat /data/layer1.txt /opt/dir/c /data/layer3.bin >/dev/null";

fn curl_json(url: &str, accept: &str) -> (String, Value) {
    let o = Command::new("curl")
        .args(["--noproxy", "*", "-s", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        code.to_string(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Node B: its own tiers and state, pulling from `registry` (node A's).
fn configure_node_b(b: &Bed, registry: &str, extra: &str) {
    fs::write(
        &b.config,
        format!(
            "state_dir = {:?}\npmem_dir = {:?}\ndisk_dir = {:?}\npmem_budget = \"64M\"\ninsecure_registries = [{registry:?}]\ndocker_config = \"\"\ncontainerd_config = \"\"\n{extra}",
            b.state, b.pmem, b.disk
        ),
    )
    .expect("config");
}

/// Upload `body` as a blob of `repo`; returns its digest.
fn put_blob(host: &str, repo: &str, body: &[u8]) -> String {
    let digest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(body));
    let o = Command::new("curl")
        .args(["--noproxy", "*", "-s", "-i", "-X", "POST"])
        .arg(format!("http://{host}/v2/{repo}/blobs/uploads/"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&o.stdout).into_owned();
    let loc = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("upload location");
    let sep = if loc.contains('?') { '&' } else { '?' };
    let url = if loc.starts_with("http") {
        format!("{loc}{sep}digest={digest}")
    } else {
        format!("http://{host}{loc}{sep}digest={digest}")
    };
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("blob");
    fs::write(&f, body).expect("blob");
    let o = Command::new("curl")
        .args([
            "--noproxy",
            "*",
            "-sf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
        ])
        .arg(format!("@{}", f.display()))
        .arg(&url)
        .output()
        .expect("curl");
    assert!(
        o.status.success(),
        "blob upload: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    digest
}

/// PUT a manifest (or index) at `reference` (tag or digest).
fn put_manifest(host: &str, repo: &str, reference: &str, media: &str, body: &[u8]) {
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("m");
    fs::write(&f, body).expect("manifest");
    let o = Command::new("curl")
        .args(["--noproxy", "*", "-sf", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {media}"))
        .arg("--data-binary")
        .arg(format!("@{}", f.display()))
        .arg(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .output()
        .expect("curl");
    assert!(
        o.status.success(),
        "manifest put: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A newer profile artifact for `subject` with file `path` in layer
/// `diff_id`, listed in the referrers tag index.
fn push_hostile_artifact(
    host: &str,
    repo: &str,
    subject: &str,
    diff_id: &str,
    path: &str,
    created: &str,
) -> String {
    let body = serde_json::json!({
        "schema_version": 1, "diff_ids": [diff_id], "runs": 1, "tracer": "ebpf",
        "files": [{"diff_id": diff_id, "path": path, "bytes": 1,
                   "first_access_ms": 0.0, "kinds": ["open"], "count": 1}]
    })
    .to_string();
    let blob = put_blob(host, repo, body.as_bytes());
    let empty = put_blob(host, repo, b"{}");
    let kind = "application/vnd.nvtier.profile.v1+json";
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": kind,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": kind, "digest": blob, "size": body.len()}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 1},
        "annotations": {"org.opencontainers.image.created": created}
    })
    .to_string();
    let digest = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(m.as_bytes())
    );
    put_manifest(
        host,
        repo,
        &digest,
        "application/vnd.oci.image.manifest.v1+json",
        m.as_bytes(),
    );
    let tag = subject.replace(':', "-");
    let (_, mut index) = curl_json(
        &format!("http://{host}/v2/{repo}/manifests/{tag}"),
        "application/vnd.oci.image.index.v1+json",
    );
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
            "size": m.len(), "artifactType": kind,
            "annotations": {"org.opencontainers.image.created": created}
        }));
    put_manifest(
        host,
        repo,
        &tag,
        "application/vnd.oci.image.index.v1+json",
        index.to_string().as_bytes(),
    );
    digest
}

fn layer_paths(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["chain_id"].as_str().expect("chain").to_string(),
                l["tier"].as_str().expect("tier").to_string(),
            )
        })
        .collect()
}

#[test]
fn profile_pushed_on_one_node_tiers_the_first_pull_on_another() {
    let a = Bed::up("prfa", "none", "4G");
    let b = Bed::up("prfb", "none", "64M");
    let r = a.push("prf1", "busybox,1M,1M,8M,1M");
    let (host, path) = r.split_once('/').expect("host/path");
    let repo = path.split(':').next().expect("repo");

    // Node A: pull, record a cold start, push the profile.
    a.nvtier_ok(&["pull", &r]);
    let t = a.nvtier_json(&["trace", &r, "--", "/bin/sh", "-c", READS]);
    assert_eq!(t["exit_code"], 0, "{t}");
    let prof_a = a.nvtier_json(&["profile", "show", &r]);
    let push = a.nvtier_json(&["profile", "push", &r]);
    // docker-registry 2.8 has no referrers API: the tag schema is used.
    assert_eq!(push["method"], "tag-schema", "{push}");
    let artifact = push["artifact_digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let subject = push["subject_digest"]
        .as_str()
        .expect("subject")
        .to_string();
    let (code, _) = curl_json(
        &format!("http://{host}/v2/{repo}/referrers/{subject}"),
        "application/vnd.oci.image.index.v1+json",
    );
    assert_eq!(code, "404", "the registry grew a referrers API");
    let (code, index) = curl_json(
        &format!(
            "http://{host}/v2/{repo}/manifests/{}",
            subject.replace(':', "-")
        ),
        "application/vnd.oci.image.index.v1+json",
    );
    assert_eq!(code, "200", "no referrers tag index");
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["digest"], artifact.as_str());
    assert_eq!(
        entries[0]["artifactType"],
        "application/vnd.nvtier.profile.v1+json"
    );
    // The artifact: subject = the image, one layer = the portable profile,
    // which names no host and no image.
    let (code, m) = curl_json(
        &format!("http://{host}/v2/{repo}/manifests/{artifact}"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert_eq!(code, "200");
    assert_eq!(m["subject"]["digest"], subject.as_str(), "{m}");
    let blob = m["layers"][0]["digest"].as_str().expect("layer digest");
    let o = Command::new("curl")
        .args(["--noproxy", "*", "-sf"])
        .arg(format!("http://{host}/v2/{repo}/blobs/{blob}"))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(body.contains("/data/layer3.bin"), "{body}");
    for leak in [host, "prf1", a.state.to_str().expect("utf8"), "chain"] {
        assert!(!body.contains(leak), "the artifact names {leak:?}: {body}");
    }
    // Pushing again adds a second artifact; the newest wins on pulls.
    let push2 = a.nvtier_json(&["profile", "push", &r]);
    assert_ne!(push2["artifact_digest"], push["artifact_digest"]);
    // Newer artifacts, one hostile (a path out of the image), one for other
    // layers: pulls skip both for the newest valid one.
    let hostile = push_hostile_artifact(
        host,
        repo,
        &subject,
        "sha256:00",
        "/../../etc/shadow",
        "2999-01-01T00:00:00.000Z",
    );
    let other_layers = push_hostile_artifact(
        host,
        repo,
        &subject,
        "sha256:00",
        "/bin/sh",
        "2998-01-01T00:00:00.000Z",
    );

    // Node B, with registry profiles off: LASS as before, no profile.
    configure_node_b(&b, host, "profiles_from_registry = false\n");
    let lass = b.nvtier_json(&["pull", &r]);
    assert!(lass["profile"].is_null(), "{lass}");
    assert!(
        b.nvtier_json(&["profile", "list"])[0]["profiled"] == false,
        "no profile without the registry"
    );
    b.nvtier_ok(&["rm", &r]);
    b.nvtier_ok(&["gc"]);

    // Node B, default: the first pull is tiered.
    configure_node_b(&b, host, "");
    let o = b.nvtier(&["pull", "--json", &r]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: Value = serde_json::from_slice(&o.stdout).expect("report");
    let p = &rep["profile"];
    assert_eq!(p["artifact_digest"], push2["artifact_digest"], "{rep}");
    let err = String::from_utf8_lossy(&o.stderr);
    for bad in [&hostile, &other_layers] {
        assert!(
            err.lines()
                .any(|l| l.contains("skipping an invalid profile artifact")
                    && l.contains(bad.as_str())),
            "{bad} not skipped: {err}"
        );
    }
    assert!(err.contains("other layers"), "{err}");
    assert_eq!(p["tiered"], true, "{rep}");
    assert!(p["error"].is_null(), "{rep}");
    assert_eq!(p["meta_built"], true, "{rep}");
    assert!(p["tiered_done_ms"].as_f64().is_some_and(|t| t > 0.0));
    // LASS placed the bases (the deploy stays as fast; with streamed
    // storing they may all be on disk); `nvtier pull` moved any pmem ones
    // to disk before it exited.
    common::check_lass_rule(&rep);
    let prof_b = b.nvtier_json(&["profile", "show", &r]);
    let paths = |p: &Value| -> Vec<String> {
        let mut v: Vec<String> = p["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| f["path"].as_str().expect("path").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(paths(&prof_b), paths(&prof_a));
    assert_eq!(prof_b["image"], r.as_str());
    // pmem holds hot data and the metadata layer, no layer base.
    let st = b.nvtier_json(&["status"]);
    assert_eq!(st["pmem_layer_bytes"], 0, "{st}");
    assert!(
        st["pmem_hot_bytes"].as_u64().is_some_and(|h| h >= 8 << 20),
        "{st}"
    );
    assert!(
        st["pmem_meta_bytes"].as_u64().is_some_and(|m| m > 0),
        "{st}"
    );
    assert!(layer_paths(&b.nvtier_json(&["layers", &r]))
        .iter()
        .all(|(_, t)| t == "disk"));
    // The first cold start on B reads no data from the disk tier.
    let miss = b.nvtier_json(&["trace", "--misses", &r, "--", "/bin/sh", "-c", READS]);
    assert_eq!(miss["exit_code"], 0, "{miss}");
    assert_eq!(miss["tracer"], "ebpf", "{miss}");
    assert_eq!(
        miss["misses"].as_array().map(Vec::len),
        Some(0),
        "{}",
        miss["misses"]
    );
    // And the rootfs is the image's, byte for byte.
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("root");
    fs::create_dir(&mnt).expect("mkdir");
    b.nvtier_ok(&["mount", &r, mnt.to_str().expect("utf8")]);
    let got = listing(&mnt);
    b.nvtier_ok(&["umount", mnt.to_str().expect("utf8")]);
    common::assert_same_tree(&listing(&reference_rootfs("prf1")), &got);

    // A pull of an image without a profile is LASS as before.
    let other = a.push_seed("prf2", "busybox,1M,2M", 5);
    let rep = b.nvtier_json(&["pull", &other]);
    assert!(rep["profile"].is_null(), "{rep}");
    common::check_lass_rule(&rep);
    assert!(!Path::new(&b.state.join("profiles-pushed")).exists());
}

/// `profile_push = true`: the daemon publishes a profile after it is
/// recorded, and only once per content.
#[test]
fn daemon_publishes_changed_profiles() {
    let a = Bed::up("prfd", "none", "4G");
    let r = a.push("prfd1", "busybox,1M,1M");
    let (host, path) = r.split_once('/').expect("host/path");
    let repo = path.split(':').next().expect("repo");
    let text = fs::read_to_string(&a.config).expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    fs::write(
        &a.config,
        format!(
            "{text}snapshotter_socket = \"\"\ndocker_plugin_socket = {:?}\nmigrate_interval_s = 1\nprofile_push = true\ndocker_config = \"\"\ncontainerd_config = \"\"\nmetrics_address = \"127.0.0.1:{port}\"\n",
            a.state.join("plugin.sock")
        ),
    )
    .expect("config");
    a.nvtier_ok(&["pull", &r]);
    let log = a.state.join("serve.log");
    let _serve = common::Serve::start(&a, Some(&log));
    let t = a.nvtier_json(&["trace", &r, "--", "/bin/sh", "-c", "cat /data/layer1.txt"]);
    assert_eq!(t["exit_code"], 0, "{t}");
    let subject = common::manifest_digest("prfd1");
    let url = format!(
        "http://{host}/v2/{repo}/manifests/{}",
        subject.replace(':', "-")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let entries = loop {
        let (code, index) = curl_json(&url, "application/vnd.oci.image.index.v1+json");
        if code == "200" {
            break index["manifests"].as_array().expect("manifests").len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon published nothing: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(entries, 1);
    // Unchanged: nothing more is pushed, across rounds.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let (_, index) = curl_json(&url, "application/vnd.oci.image.index.v1+json");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
    let published = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("published the profile"))
        .count();
    assert_eq!(published, 1);
    // The metrics endpoint counts the push and reads the store.
    let metrics = |path: &str| {
        let o = Command::new("curl")
            .args(["--noproxy", "*", "-s", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = metrics("/metrics");
    assert!(text.ends_with("\n200"), "{text}");
    for line in [
        "nvtier_profile_pushes_total{result=\"ok\"} 1",
        "nvtier_images 1",
        "nvtier_pmem_budget_bytes 4294967296",
        "nvtier_tier_available{tier=\"pmem\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    let hot: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nvtier_pmem_hot_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("hot bytes");
    let st = a.nvtier_json(&["status"]);
    assert_eq!(Some(hot), st["pmem_hot_bytes"].as_u64(), "{st}");
    assert!(metrics("/").ends_with("\n404"));
}

/// The remote-snapshot path: `docker pull` on dockerd 26 + containerd 1.7
/// makes nvtier pull the image itself; with a profile in the registry the
/// image is tiered at pull time, and containers run on it.
#[test]
fn docker_pull_uses_the_registry_profile() {
    use engines::*;
    let eng = trixie_engines();
    let bin = std::path::PathBuf::from(&eng["ENGINES_BIN"]);
    let a = Bed::up("prfe", "none", "4G");
    let b = Bed::up("prfk", "none", "256M");
    let r = a.push("prfe1", "busybox,1M,1M,8M,1M");
    let host = r.split_once('/').expect("host/path").0;
    a.nvtier_ok(&["pull", &r]);
    let t = a.nvtier_json(&["trace", &r, "--", "/bin/sh", "-c", READS]);
    assert_eq!(t["exit_code"], 0, "{t}");
    let push = a.nvtier_json(&["profile", "push", &r]);

    let rd = make_run_dir(&b);
    let sock = write_serve_config(&b, "256M", &containerd_root(&b));
    let text = fs::read_to_string(&b.config).expect("config");
    let text = text.replace(
        &format!("insecure_registries = [{:?}]", b.registry),
        &format!("insecure_registries = [{host:?}]"),
    );
    fs::write(
        &b.config,
        format!("{text}docker_config = \"\"\ncontainerd_config = \"\"\nmigrate_interval_s = 1\n"),
    )
    .expect("config");
    let nv = start_nvtier(&b, &sock, "nvtier");
    let ctd = Containerd::start(&b, &sock, Some(&bin));
    let dockerd = Dockerd::start_with(&b, &ctd, &["--insecure-registry", host]);
    dockerd.docker_ok(&["pull", &r]);
    let reports = common::pull_reports(&b);
    assert_eq!(reports.len(), 1);
    let p = &reports[0]["profile"];
    assert_eq!(p["artifact_digest"], push["artifact_digest"], "{p}");
    assert_eq!(p["tiered"], true, "{p}");
    assert!(p["error"].is_null(), "{p}");
    // The daemon's background migration moves the pmem bases to disk.
    engines::wait_for("the pmem bases to move to disk", 60, || {
        let st = b.nvtier_json(&["status"]);
        st["pmem_layer_bytes"] == 0 && st["pmem_hot_bytes"].as_u64().is_some_and(|h| h >= 8 << 20)
    });
    // A container's mount is tiered, and reads right.
    let want = fs::read(reference_rootfs("prfe1").join("data/layer3.bin")).expect("ref");
    let want = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&want));
    let cid = dockerd.docker_ok(&["run", "-d", "--network", "none", &r, "sleep", "300"]);
    let cid = cid.trim();
    let st = b.nvtier_json(&["status"]);
    assert!(
        st["tiered_mounts"].as_u64().is_some_and(|n| n >= 1),
        "the container's mount is not tiered: {st}"
    );
    let out = dockerd.docker_ok(&["exec", cid, "sha256sum", "/data/layer3.bin"]);
    assert!(out.starts_with(&want), "{out} vs {want}");
    dockerd.docker_ok(&["rm", "-f", cid]);
    dockerd.docker_ok(&["rmi", &r]);
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
}

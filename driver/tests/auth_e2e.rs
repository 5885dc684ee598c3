//! Root integration tests of registry credentials: a real docker-registry
//! behind htpasswd basic auth (a second registry process in the testbed's
//! network namespace, serving the same storage on another port), pulled
//! from by `nvtier pull` and, through the remote-snapshot path, by dockerd
//! 26 + containerd 1.7 after a real `docker login`.

mod common;
mod engines;

use common::auth::{docker_json, AuthRegistry, PASSWORD, USER};
use common::{check_lass_rule, Bed};
use engines::*;
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Add `host` to the config's insecure registries and set the credential
/// files nvtier reads.
fn configure(bed: &Bed, host: &str, docker_config: &Path) {
    let text = fs::read_to_string(&bed.config).expect("config");
    let old = format!("insecure_registries = [{:?}]", bed.registry);
    assert!(text.contains(&old), "{text}");
    let text = text.replace(
        &old,
        &format!("insecure_registries = [{:?}, {host:?}]", bed.registry),
    );
    fs::write(
        &bed.config,
        format!("{text}docker_config = {docker_config:?}\ncontainerd_config = \"\"\n"),
    )
    .expect("config");
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `nvtier pull` from a registry behind basic auth: with no credentials
/// the error names where nvtier looked and the fix; wrong ones are named
/// as refused; `--creds-file` (also from stdin) and a Docker config.json
/// work, and the report says where the credentials came from.
#[test]
fn cli_pull_with_node_credentials() {
    let bed = Bed::up("auth", "none", "64M");
    let dir = tempfile::tempdir().expect("tmp");
    let img = bed.push("auth1", "busybox,2M,1M");
    let reg = AuthRegistry::start(&bed, dir.path());
    let aimg = reg.reference(&img);
    let docker = dir.path().join("docker/config.json");
    configure(&bed, &reg.host, &docker);

    // No credentials anywhere.
    let o = bed.nvtier(&["pull", &aimg, "--json"]);
    assert!(!o.status.success(), "pulled without credentials");
    let e = stderr(&o);
    assert!(e.contains("refused access"), "{e}");
    assert!(e.contains(&format!("docker login {}", reg.host)), "{e}");
    assert!(e.contains(&docker.display().to_string()), "{e}");
    assert!(
        bed.stored_layers().is_empty(),
        "a failed pull stored layers"
    );
    assert!(bed.leftovers().is_empty(), "{:?}", bed.leftovers());

    // Wrong credentials from a file.
    let creds = dir.path().join("creds");
    fs::write(&creds, format!("{USER}:wrong\n")).expect("creds");
    let o = bed.nvtier(&["pull", &aimg, "--creds-file", creds.to_str().expect("utf8")]);
    assert!(!o.status.success(), "pulled with a wrong password");
    let e = stderr(&o);
    assert!(e.contains("from the command line were refused"), "{e}");

    // Right credentials from stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvtier"))
        .args(["pull", &aimg, "--json", "--creds-file", "-"])
        .env("NVTIER_CONFIG", &bed.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nvtier pull");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{USER}:{PASSWORD}\n").as_bytes())
        .expect("write creds");
    let o = child.wait_with_output().expect("pull");
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: Value = serde_json::from_slice(&o.stdout).expect("report");
    assert_eq!(rep["credentials"], "the command line", "{rep}");
    check_lass_rule(&rep);
    bed.nvtier_ok(&["rm", &aimg]);

    // From the Docker config.json (as `docker login` writes it).
    fs::create_dir_all(docker.parent().expect("dir")).expect("mkdir");
    fs::write(&docker, docker_json(&reg.host, USER, PASSWORD)).expect("docker config");
    let rep = bed.nvtier_json(&["pull", &aimg]);
    assert_eq!(
        rep["credentials"],
        format!("docker config {}", docker.display()),
        "{rep}"
    );
    let images = bed.nvtier_json(&["images"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    // The password never reaches the report or the listing.
    assert!(!rep.to_string().contains(PASSWORD));
    assert!(!images.to_string().contains(PASSWORD));
    // The same file with a wrong password is named as refused.
    bed.nvtier_ok(&["rm", &aimg]);
    fs::write(&docker, docker_json(&reg.host, USER, "wrong")).expect("docker config");
    let o = bed.nvtier(&["pull", &aimg]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("docker config {} were refused", docker.display())),
        "{e}"
    );
    // An anonymous pull is asked for explicitly.
    fs::write(&docker, docker_json(&reg.host, USER, PASSWORD)).expect("docker config");
    let o = bed.nvtier(&["pull", &aimg, "--anonymous"]);
    assert!(!o.status.success(), "anonymous pull got through");
    assert!(bed.stored_layers().is_empty());
}

/// `docker login` + `docker pull` on dockerd 26 + containerd 1.7: nvtier
/// finds the login in Docker's config.json and pulls with LASS itself (no
/// fallback). With a wrong password in that file, containerd unpacks the
/// image itself; nvtier logs it once, clearly, and `status` shows it.
#[test]
fn docker_login_pull_and_auth_fallback() {
    let eng = trixie_engines();
    let bin = PathBuf::from(&eng["ENGINES_BIN"]);
    let bed = Bed::up("dauth", "100mbit", "256M");
    let rd = make_run_dir(&bed);
    let dir = tempfile::tempdir().expect("tmp");
    let img1 = bed.push("dauth1", "busybox,8M,4M,12M,2M,1M");
    let img2 = bed.push_seed("dauth2", "busybox,3M,2M,1M", 7);
    let reg = AuthRegistry::start(&bed, dir.path());
    let (a1, a2) = (reg.reference(&img1), reg.reference(&img2));

    // The docker CLI's config directory; nvtier reads the file docker
    // login writes there.
    let cli_dir = dir.path().join("cli");
    let docker = cli_dir.join("config.json");
    let sock = write_serve_config(&bed, "256M", &containerd_root(&bed));
    configure(&bed, &reg.host, &docker);
    let nv = start_nvtier(&bed, &sock, "nvtier");
    let ctd = Containerd::start(&bed, &sock, Some(&bin));
    let dockerd = Dockerd::start_with(&bed, &ctd, &["--insecure-registry", &reg.host]);
    let docker_cli = |cfg: &Path, args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("docker");
        c.arg("--config")
            .arg(cfg)
            .arg("-H")
            .arg(format!("unix://{}", dockerd.sock.display()))
            .args(args)
            .env("PATH", &dockerd.path_env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("docker");
        if let Some(s) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(s.as_bytes())
                .expect("stdin");
        }
        let o = child.wait_with_output().expect("docker");
        assert!(o.status.success(), "docker {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    docker_cli(
        &cli_dir,
        &["login", &reg.host, "-u", USER, "--password-stdin"],
        Some(PASSWORD),
    );
    assert!(
        docker.exists(),
        "docker login wrote no {}",
        docker.display()
    );

    // 1. docker pull: nvtier pulls with the login, with LASS.
    docker_cli(&cli_dir, &["pull", &a1], None);
    let images = bed.nvtier_json(&["images"]);
    let imgs = images.as_array().expect("images");
    assert_eq!(imgs.len(), 1, "nvtier did not pull it: {images}");
    assert_eq!(imgs[0]["origin"], "engine", "{images}");
    let reports = common::pull_reports(&bed);
    assert_eq!(reports.len(), 1);
    let rep = &reports[0];
    assert_eq!(
        rep["credentials"],
        format!("docker config {}", docker.display()),
        "{rep}"
    );
    check_lass_rule(rep);
    let layers = bed.nvtier_json(&["layers"]);
    // The report's tiers follow the streamed LASS rule (checked above);
    // the store holds each layer where the report says.
    for l in rep["layers"].as_array().expect("layers") {
        let i = l["index"].as_u64().expect("index") as usize;
        let stored = layers
            .as_array()
            .expect("layers")
            .iter()
            .find(|x| x["chain_id"] == l["chain_id"])
            .expect("stored layer");
        assert!(
            stored["blob_digest"].is_string(),
            "not pulled by nvtier: {stored}"
        );
        assert_eq!(stored["tier"], l["tier"], "layer {i}");
    }
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(st["engine_fallbacks"], serde_json::json!([]), "{st}");
    let out = dockerd.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &a1,
        "cat",
        "/data/layer2.txt",
    ]);
    assert!(!out.is_empty());

    // 2. A wrong password where nvtier reads it (the CLI keeps a good
    // copy): containerd unpacks the image itself; nvtier says why once.
    let good = dir.path().join("cli-good");
    fs::create_dir_all(&good).expect("mkdir");
    fs::copy(&docker, good.join("config.json")).expect("copy");
    fs::write(&docker, docker_json(&reg.host, USER, "wrong")).expect("wrong password");
    docker_cli(&good, &["pull", &a2], None);
    let images = bed.nvtier_json(&["images"]);
    assert_eq!(images.as_array().map(Vec::len), Some(1), "{images}");
    let st = bed.nvtier_json(&["status"]);
    let fb = st["engine_fallbacks"].as_array().expect("fallbacks");
    assert_eq!(fb.len(), 1, "{st}");
    assert_eq!(fb[0]["image"], a2.as_str());
    assert_eq!(fb[0]["auth"], true);
    let reason = fb[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("were refused"), "{reason}");
    assert!(
        !reason.contains("wrong") && !reason.contains(PASSWORD),
        "{reason}"
    );
    let text = bed.nvtier_ok(&["status"]);
    assert!(text.contains(&format!("fallback  {a2}")), "{text}");
    let log = nv.log_text();
    let warned = log
        .lines()
        .filter(|l| l.contains("nvtier could not pull the image") && l.contains(&a2))
        .count();
    assert_eq!(warned, 1, "want one warning for {a2}:\n{log}");
    // The image works all the same (containerd's own unpack).
    dockerd.docker_ok(&["run", "--rm", "--network", "none", &a2, "true"]);

    // 3. Fixed credentials: once nvtier has pulled the image itself, the
    // fallback record goes.
    fs::copy(good.join("config.json"), &docker).expect("restore");
    bed.nvtier_ok(&["pull", &a2]);
    let st = bed.nvtier_json(&["status"]);
    assert_eq!(st["engine_fallbacks"], serde_json::json!([]), "{st}");
    dockerd.docker_ok(&["rmi", &a1, &a2]);
    drop(dockerd);
    drop(ctd);
    drop(nv);
    drop(rd);
}

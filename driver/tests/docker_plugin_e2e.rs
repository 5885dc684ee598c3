//! Root integration tests of the legacy Docker graph driver plugin against
//! a real Docker Engine 20.10 (`dockerd --experimental -s <plugin>`), with
//! its own managed containerd, data root, exec root and API socket, so
//! tests run in parallel. The plugin is found by a unique name through
//! `/etc/docker/plugins/<name>.spec`, removed afterwards.

mod common;
use common::*;
use serde_json::Value;
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = "busybox,4M,2M,1M";
const DOCKER: &str = "/usr/bin/docker";

/// The engine under test: Debian's dockerd 20.10, or another build (e.g.
/// 26.1) named by `NVTIER_TEST_DOCKERD`.
fn dockerd_bin() -> String {
    std::env::var("NVTIER_TEST_DOCKERD").unwrap_or_else(|_| "/usr/sbin/dockerd".into())
}

/// A plugin process + dockerd on top of a testbed.
struct Engine {
    bed: Bed,
    plugin_name: String,
    plugin_sock: PathBuf,
    plugin_log: PathBuf,
    plugin: Option<Child>,
    root: PathBuf,
    exec_root: PathBuf,
    api: PathBuf,
    dockerd: Option<Child>,
    spec_file: PathBuf,
    /// The plugin runs inside `nvtier serve` (which also records container
    /// starts and migrates), not as `nvtier docker-plugin`.
    served: bool,
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Engine {
    /// Testbed + plugin; `start_dockerd` also brings up dockerd.
    fn up(tag: &str, pmem_budget: &str, start_dockerd: bool) -> Engine {
        Self::up_with(tag, pmem_budget, start_dockerd, false)
    }

    /// [`Engine::up`] with the plugin hosted by `nvtier serve` (config
    /// `extra` lines appended), and dockerd.
    fn up_served(tag: &str, pmem_budget: &str, extra: &str) -> Engine {
        let mut e = Self::up_with(tag, pmem_budget, false, true);
        let mut cfg = fs::read_to_string(&e.bed.config).expect("config");
        cfg.push_str(&format!(
            "snapshotter_socket = \"\"\ndocker_plugin_socket = {:?}\n{extra}",
            e.plugin_sock
        ));
        fs::write(&e.bed.config, cfg).expect("config");
        e.start_plugin();
        e.start_dockerd();
        e
    }

    fn up_with(tag: &str, pmem_budget: &str, start_dockerd: bool, served: bool) -> Engine {
        let dockerd = dockerd_bin();
        assert!(
            Path::new(&dockerd).exists(),
            "{dockerd} missing: run testbed/install-deps.sh (Debian docker.io)"
        );
        let bed = Bed::up(tag, "none", pmem_budget);
        let base = bed.state.parent().expect("base").to_path_buf();
        let plugin_name = format!("nvtier-{}", bed.name);
        let mut e = Engine {
            plugin_sock: base.join("plugin.sock"),
            plugin_log: base.join("plugin.log"),
            plugin: None,
            root: base.join("docker"),
            // Short: containerd's sockets live under it.
            exec_root: PathBuf::from(format!("/run/nvt-dk-{}", bed.name)),
            api: base.join("docker.sock"),
            dockerd: None,
            spec_file: PathBuf::from(format!("/etc/docker/plugins/{plugin_name}.spec")),
            plugin_name,
            bed,
            served,
        };
        if !served {
            e.start_plugin();
        }
        fs::create_dir_all("/etc/docker/plugins").expect("mkdir plugins");
        fs::write(
            &e.spec_file,
            format!("unix://{}\n", e.plugin_sock.display()),
        )
        .expect("spec file");
        if start_dockerd {
            e.start_dockerd();
        }
        e
    }

    fn start_plugin(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.plugin_log)
            .expect("plugin log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nvtier"));
        if self.served {
            cmd.arg("serve");
        } else {
            cmd.args(["docker-plugin", "--socket"])
                .arg(&self.plugin_sock);
        }
        let child = cmd
            .env("NVTIER_CONFIG", &self.bed.config)
            .env("NVTIER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start plugin");
        self.plugin = Some(child);
        let sock = self.plugin_sock.clone();
        wait_for("the plugin socket", Duration::from_secs(20), || {
            UnixStream::connect(&sock).is_ok()
        });
    }

    /// `kill -9`: the socket file stays behind (stale).
    fn kill_plugin(&mut self) {
        if let Some(mut c) = self.plugin.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop_plugin(&mut self) {
        if let Some(mut c) = self.plugin.take() {
            stop(&mut c, Duration::from_secs(10));
        }
    }

    fn start_dockerd(&mut self) {
        fs::create_dir_all(&self.root).expect("data root");
        let log = fs::File::create(self.root.with_extension("log")).expect("dockerd log");
        // A private (empty) daemon.json: never the host's /etc/docker/daemon.json.
        let cfg = self.root.with_extension("json");
        fs::write(&cfg, "{}\n").expect("daemon.json");
        let child = Command::new(dockerd_bin())
            .args(["--experimental", "-s", &self.plugin_name])
            .arg("--config-file")
            .arg(&cfg)
            .arg("--data-root")
            .arg(&self.root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("-H")
            .arg(format!("unix://{}", self.api.display()))
            .arg("--pidfile")
            .arg(self.root.with_extension("pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--insecure-registry",
                &self.bed.registry,
            ])
            .env("NO_PROXY", "*")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.dockerd = Some(child);
        let t0 = Instant::now();
        loop {
            let o = self.docker(&["info", "--format", "{{.Driver}}"]);
            if o.status.success() {
                assert_eq!(
                    String::from_utf8_lossy(&o.stdout).trim(),
                    self.plugin_name,
                    "dockerd uses another storage driver"
                );
                let v = self.docker(&["version", "--format", "{{.Server.Version}}"]);
                eprintln!(
                    "dockerd {} with storage driver {}",
                    String::from_utf8_lossy(&v.stdout).trim(),
                    self.plugin_name
                );
                break;
            }
            if let Some(Ok(Some(st))) = self.dockerd.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({st}):\n{}", self.dockerd_log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "dockerd did not come up:\n{}",
                self.dockerd_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn dockerd_log(&self) -> String {
        fs::read_to_string(self.root.with_extension("log")).unwrap_or_default()
    }

    fn plugin_log(&self) -> String {
        fs::read_to_string(&self.plugin_log).unwrap_or_default()
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.api.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.root.with_extension("cli"))
            .output()
            .expect("run docker")
    }

    /// `docker run --rm --network none IMAGE sh -c SCRIPT`: its stdout.
    fn run_sh(&self, image: &str, script: &str) -> String {
        self.docker_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ])
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed:\n{}\n{}\n--- plugin log ---\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            tail(&self.plugin_log(), 40)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Graph-driver records, by ID.
    fn graph_records(&self) -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        for e in fs::read_dir(self.bed.state.join("graph/layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let v: Value =
                    serde_json::from_slice(&fs::read(&p).expect("read")).expect("record json");
                m.insert(v["id"].as_str().expect("id").to_string(), v);
            }
        }
        m
    }

    fn mounts_under(&self, dir: &Path) -> Vec<String> {
        mounts_with_prefix(&dir.to_string_lossy())
    }
}

fn mounts_with_prefix(prefix: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut d) = self.dockerd.take() {
            stop(&mut d, Duration::from_secs(30));
        }
        // Container shims of this engine (their command line names our
        // exec root), should dockerd have died without stopping them.
        let needle = self.exec_root.to_string_lossy().into_owned();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.stop_plugin();
        let _ = fs::remove_file(&self.spec_file);
        // Mounts left by dockerd (netns, shm) and by the plugin (layers).
        for prefix in [
            self.exec_root.to_string_lossy().into_owned(),
            self.root.to_string_lossy().into_owned(),
            self.bed.disk.join("graph").to_string_lossy().into_owned(),
        ] {
            let mut mps = mounts_with_prefix(&prefix);
            mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for mp in mps {
                let _ = nix::mount::umount2(mp.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = fs::remove_dir_all(&self.exec_root);
        // The testbed (Bed) is torn down after this.
    }
}

/// `sha256sum` lines of every regular file under the given image dirs of
/// the umoci reference rootfs, with absolute paths.
/// `sh -c SCRIPT` in a new container NAME of `image` (no network), then
/// the lines of `docker diff NAME`.
fn run_and_diff(eng: &Engine, name: &str, image: &str, script: &str) -> BTreeSet<String> {
    eng.docker_ok(&[
        "run",
        "--name",
        name,
        "--network",
        "none",
        image,
        "sh",
        "-c",
        script,
    ]);
    eng.docker_ok(&["diff", name])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `docker save -o SAVED IMAGE`: the archive's files by path, and its
/// manifest.json.
fn docker_save(eng: &Engine, image: &str, saved: &Path) -> (BTreeMap<String, Vec<u8>>, Value) {
    eng.docker_ok(&["save", "-o", saved.to_str().expect("utf8"), image]);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(saved).expect("open saved"));
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let p = e.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read");
        files.insert(p, data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).expect("manifest");
    (files, manifest)
}

fn string_set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn reference_sums(rootfs: &Path, dirs: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (rel, desc) in listing(rootfs) {
        if !dirs.iter().any(|d| rel.starts_with(d)) {
            continue;
        }
        if let Some(rest) = desc.strip_prefix("file ") {
            let sum = rest.split(' ').nth(1).expect("sha");
            out.insert(format!("{sum}  /{rel}"));
        }
    }
    out
}

#[test]
fn docker_pull_run_diff_commit_save_with_the_plugin() {
    let eng = Engine::up("dkrun", "256M", true);
    let r = eng.bed.push("dkimg", SPEC);

    // Pull: every layer goes through Create + ApplyDiff into the nvtier store.
    eng.docker_ok(&["pull", &r]);
    let recs = eng.graph_records();
    assert_eq!(recs.len(), 4, "one graph layer per image layer: {recs:#?}");
    assert!(recs.values().all(|v| v["chain_id"].is_string()));
    let layers = eng.bed.nvtier_json(&["layers"]);
    assert_eq!(layers.as_array().map(Vec::len), Some(4), "{layers:#}");
    // The plugin's chainIDs are the image's OCI chainIDs (Docker sends the
    // uncompressed layer tars), so nvtier and Docker share layers.
    let diff_ids: Vec<String> = serde_json::from_str(&eng.docker_ok(&[
        "image",
        "inspect",
        &r,
        "--format",
        "{{json .RootFS.Layers}}",
    ]))
    .expect("diff ids");
    let want_chains: BTreeSet<String> = nvtier::store::chain_ids(&diff_ids).into_iter().collect();
    let got_chains: BTreeSet<String> = recs
        .values()
        .map(|v| v["chain_id"].as_str().expect("chain").to_string())
        .collect();
    assert_eq!(got_chains, want_chains);
    // Tier rule: the bottom layer has no applied parent (disk); every
    // placement is explained; pmem accounting matches the store's.
    for v in recs.values() {
        let why = v["placement"].as_str().expect("placement");
        if v["parent"].is_null() {
            assert!(why.starts_with("gated"), "{v}");
        }
    }
    let pmem_charged: u64 = layers
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["pmem_bytes"].as_u64().expect("pmem bytes"))
        .sum();
    let st = eng.bed.nvtier_json(&["status"]);
    assert_eq!(st["pmem_used_bytes"].as_u64(), Some(pmem_charged), "{st:#}");
    eprintln!("placement after docker pull: {layers:#}");
    // `nvtier pull` of the same image reuses every layer Docker stored.
    let rep = eng.bed.nvtier_json(&["pull", &r]);
    assert!(
        rep["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .all(|l| l["reused"] == true),
        "{rep:#}"
    );
    eng.bed.nvtier_ok(&["rm", &r]);
    assert_eq!(
        eng.bed.nvtier_json(&["layers"]).as_array().map(Vec::len),
        Some(4),
        "`nvtier rm` keeps the layers Docker uses"
    );
    let info = eng.docker_ok(&["image", "inspect", &r, "--format", "{{json .GraphDriver}}"]);
    let gd: Value = serde_json::from_str(&info).expect("inspect json");
    assert_eq!(gd["Name"], eng.plugin_name.as_str());
    assert!(
        matches!(gd["Data"]["Tier"].as_str(), Some("pmem" | "disk")),
        "{gd}"
    );

    // Run: the container sees exactly the image's files (umoci reference).
    let rootfs = reference_rootfs("dkimg");
    let want = reference_sums(&rootfs, &["data", "opt", "etc"]);
    let got: BTreeSet<String> = eng
        .run_sh(&r, "find /data /opt /etc -type f | sort | xargs sha256sum")
        .lines()
        .filter(|l| {
            // Docker bind-mounts these over the image's.
            !["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
                .iter()
                .any(|b| l.ends_with(&format!("  {b}")))
        })
        .map(str::to_string)
        .collect();
    let want: BTreeSet<String> = want
        .into_iter()
        .filter(|l| !l.ends_with("  /etc/hostname"))
        .collect();
    assert_eq!(got, want, "container rootfs differs from the image");
    let out = eng.run_sh(
        &r,
        "test -e /etc/removeme || echo removeme-gone; ls /opt/dir; readlink /data/link",
    );
    assert_eq!(out, "removeme-gone\nc\nlayer1.txt\n");

    // Changes in a container: add, change, delete (→ whiteout), new dir.
    let diff = run_and_diff(
        &eng,
        "c1",
        &r,
        "rm /data/layer1.txt && echo new > /data/new.txt && echo x >> /etc/passwd && mkdir /newdir && rm -r /opt/dir",
    );
    let want = string_set(&[
        "C /data",
        "D /data/layer1.txt",
        "A /data/new.txt",
        "C /etc",
        "C /etc/passwd",
        "A /newdir",
        "C /opt",
        "D /opt/dir",
    ]);
    assert_eq!(diff, want, "docker diff");

    // A directory replaced in a container becomes overlay-opaque: Changes
    // lists the hidden lower entries as deleted, and Diff writes
    // `.wh..wh..opq`, which the committed image applies again.
    let diff = run_and_diff(
        &eng,
        "c2",
        &r,
        "rm -r /opt/dir && mkdir /opt/dir && echo n > /opt/dir/new",
    );
    let want = string_set(&["C /opt", "C /opt/dir", "D /opt/dir/c", "A /opt/dir/new"]);
    assert_eq!(diff, want, "docker diff of a replaced directory");
    eng.docker_ok(&["commit", "c2", "nvtier-opaque:v1"]);
    let out = eng.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "nvtier-opaque:v1",
        "ls",
        "/opt/dir",
    ]);
    assert_eq!(out, "new\n");
    let saved = eng.bed.state.parent().expect("base").join("opaque.tar");
    let (files, manifest) = docker_save(&eng, "nvtier-opaque:v1", &saved);
    let top = manifest[0]["Layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(Value::as_str)
        .expect("top layer")
        .to_string();
    let mut inner = tar::Archive::new(&files[&top][..]);
    let names: Vec<String> = inner
        .entries()
        .expect("layer entries")
        .flatten()
        .filter_map(|x| x.path().ok().map(|p| p.to_string_lossy().into_owned()))
        .collect();
    // The committed layer (not the base image's layer 2, which has one too).
    let found = names.iter().any(|n| n == "opt/dir/.wh..wh..opq");
    assert!(found, "no opaque marker in the committed layer: {names:?}");
    eng.docker_ok(&["rm", "c2"]);
    eng.docker_ok(&["rmi", "nvtier-opaque:v1"]);

    // Commit: Diff of the container layer → a new image layer (ApplyDiff).
    eng.docker_ok(&["commit", "c1", "nvtier-committed:v1"]);
    let out = eng.run_sh(
        "nvtier-committed:v1",
        "cat /data/new.txt; test -e /data/layer1.txt || echo deleted; test -e /opt/dir || echo dir-deleted; tail -n1 /etc/passwd; cat /data/hard | head -c 20",
    );
    assert_eq!(out, "new\ndeleted\ndir-deleted\nx\nnvtier testbed layer");

    // Save: the committed layer's tar holds the changes and the whiteouts.
    let base = eng.bed.state.parent().expect("base").to_path_buf();
    let saved = base.join("saved.tar");
    let (files, manifest) = docker_save(&eng, "nvtier-committed:v1", &saved);
    let layer_paths: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|v| v.as_str().expect("str").to_string())
        .collect();
    assert_eq!(layer_paths.len(), 5, "4 image layers + the committed one");
    // Every saved layer tar is byte-identical to the layer Docker recorded
    // (its sha256 is the diffID): the pulled ones are reassembled from
    // files read through `Get`, the committed one came from our `Diff`.
    let config: Value =
        serde_json::from_slice(&files[manifest[0]["Config"].as_str().expect("Config")])
            .expect("config");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    for (p, d) in layer_paths.iter().zip(diff_ids) {
        let sum = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&files[p])));
        assert_eq!(Some(sum.as_str()), d.as_str(), "saved layer {p}");
    }
    let mut top: BTreeMap<String, (tar::EntryType, Vec<u8>)> = BTreeMap::new();
    let mut ar = tar::Archive::new(&files[layer_paths.last().expect("top")][..]);
    for e in ar.entries().expect("layer entries") {
        let mut e = e.expect("layer entry");
        let p = e.path().expect("path").to_string_lossy().into_owned();
        let t = e.header().entry_type();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read");
        top.insert(p.trim_end_matches('/').to_string(), (t, data));
    }
    assert_eq!(
        top.get("data/new.txt").map(|x| x.1.as_slice()),
        Some(&b"new\n"[..]),
        "{:?}",
        top.keys()
    );
    assert!(top.contains_key("data/.wh.layer1.txt"), "{:?}", top.keys());
    assert!(top.contains_key("opt/.wh.dir"), "{:?}", top.keys());
    assert!(top.contains_key("newdir"), "{:?}", top.keys());
    assert!(top.get("etc/passwd").is_some_and(|x| x.1.ends_with(b"x\n")));
    assert!(
        !top.keys().any(|k| k.starts_with("bin")),
        "unchanged files leaked into the layer: {:?}",
        top.keys()
    );
    // The base image's saved layers are the pulled ones (tar-split).
    let base_layer = &files[&layer_paths[0]];
    let mut ar = tar::Archive::new(&base_layer[..]);
    assert!(ar
        .entries()
        .expect("entries")
        .flatten()
        .any(|e| e.path().is_ok_and(|p| p.ends_with("busybox"))));

    // Docker's layers are references: `nvtier gc` frees nothing.
    let gc = eng.bed.nvtier_json(&["gc"]);
    assert_eq!(gc["removed"].as_array().map(Vec::len), Some(0), "{gc}");
    assert_eq!(
        eng.bed.nvtier_json(&["layers"]).as_array().map(Vec::len),
        Some(5)
    );

    // Removing everything in Docker frees the layers and the mounts.
    eng.docker_ok(&["rm", "c1"]);
    eng.docker_ok(&["rmi", "nvtier-committed:v1", &r]);
    assert!(eng.graph_records().is_empty(), "{:#?}", eng.graph_records());
    assert_eq!(
        eng.bed.nvtier_json(&["layers"]).as_array().map(Vec::len),
        Some(0)
    );
    assert!(eng.mounts_under(&eng.bed.disk.join("graph")).is_empty());
}

#[test]
fn docker_plugin_restart_keeps_layers_and_running_containers() {
    let mut eng = Engine::up("dkrst", "256M", true);
    let r = eng.bed.push("dkimg", SPEC);
    eng.docker_ok(&["pull", &r]);
    let cid = eng
        .docker_ok(&["run", "-d", "--network", "none", &r, "sleep", "600"])
        .trim()
        .to_string();
    let before = eng.graph_records();
    let mounts_before = eng.mounts_under(&eng.bed.disk.join("graph"));
    assert!(!mounts_before.is_empty(), "the container rootfs is mounted");

    // kill -9 (a stale socket stays), start again, SIGTERM, start again.
    eng.kill_plugin();
    assert!(eng.plugin_sock.exists(), "stale socket");
    eng.start_plugin();
    assert_eq!(eng.graph_records(), before);
    eng.stop_plugin();
    assert!(!eng.plugin_sock.exists(), "SIGTERM removes the socket");
    eng.start_plugin();

    // Layers, refcounts and the running container's rootfs are intact.
    assert_eq!(eng.graph_records(), before);
    assert_eq!(eng.mounts_under(&eng.bed.disk.join("graph")), mounts_before);
    let out = eng.docker_ok(&["exec", &cid, "cat", "/data/layer3.txt"]);
    assert!(out.starts_with("nvtier testbed layer 3"), "{out}");
    // The restarted plugin serves new work, and Put unmounts at zero.
    let out = eng.docker_ok(&["run", "--rm", "--network", "none", &r, "echo", "again"]);
    assert_eq!(out, "again\n");
    eng.docker_ok(&["rm", "-f", &cid]);
    assert!(
        eng.mounts_under(&eng.bed.disk.join("graph")).is_empty(),
        "{:?}",
        eng.mounts_under(&eng.bed.disk.join("graph"))
    );
    // dockerd restarted against the same plugin still has the image.
    if let Some(mut d) = eng.dockerd.take() {
        stop(&mut d, Duration::from_secs(30));
    }
    eng.start_dockerd();
    let out = eng.docker_ok(&["run", "--rm", "--network", "none", &r, "cat", "/opt/dir/c"]);
    assert_eq!(out, "c (the only entry of /opt/dir)\n");
}

/// One raw HTTP exchange with the plugin: (status, body).
fn raw(sock: &Path, request: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The plugin may answer and close before reading everything. (No
    // half-close: the requests say `Connection: close`.)
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn post(sock: &Path, path: &str, body: &[u8]) -> (u16, String) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(sock, &req)
}

/// Everything under the state dir and the tiers: path → listing entry.
fn snapshot(bed: &Bed) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (tag, d) in [
        ("state", &bed.state),
        ("pmem", &bed.pmem),
        ("disk", &bed.disk),
    ] {
        for (k, v) in listing(d) {
            if k.starts_with("locks/") {
                continue; // lock files are created on demand
            }
            m.insert(format!("{tag}/{k}"), v);
        }
    }
    m
}

#[test]
fn docker_plugin_rejects_hostile_requests_without_changes() {
    let eng = Engine::up("dkbad", "256M", false);
    let sock = eng.plugin_sock.clone();
    let (st, body) = post(&sock, "/Plugin.Activate", b"{}");
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["Implements"],
        serde_json::json!(["GraphDriver"])
    );
    // A legitimate empty layer, so ApplyDiff reaches the tar checks.
    let good = "a".repeat(64);
    let (st, body) = post(
        &sock,
        "/GraphDriver.Create",
        format!(r#"{{"ID":"{good}","Parent":""}}"#).as_bytes(),
    );
    assert_eq!((st, body.trim()), (200, "{}"));
    let before = snapshot(&eng.bed);
    // The socket is private, and a second plugin refuses a live socket.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&sock).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = Command::new(env!("CARGO_BIN_EXE_nvtier"))
        .args(["docker-plugin", "--socket"])
        .arg(&sock)
        .env("NVTIER_CONFIG", &eng.bed.config)
        .output()
        .expect("second plugin");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let huge = "b".repeat(100_000);
    let hostile_ids = [
        "../../../../etc",
        "/etc/passwd",
        "a/../../b",
        "..",
        ".",
        "",
        "a/b",
        "a\u{0}b",
        "-rf",
        huge.as_str(),
        "sha256:abc",
        "a b",
    ];
    for id in hostile_ids {
        for m in [
            "Create",
            "CreateReadWrite",
            "Remove",
            "Get",
            "Put",
            "GetMetadata",
            "Changes",
            "DiffSize",
        ] {
            let req = serde_json::json!({ "ID": id, "Parent": "" }).to_string();
            let (st, body) = post(&sock, &format!("/GraphDriver.{m}"), req.as_bytes());
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{m} {id:.40?}: not JSON ({e}): {body}"));
            assert!(v["Err"].is_string(), "{m} {id:.40?}: {st} {body}");
        }
        // Hostile parent of a valid ID.
        let req = serde_json::json!({ "ID": "c".repeat(64), "Parent": id }).to_string();
        let (_, body) = post(&sock, "/GraphDriver.Create", req.as_bytes());
        if !id.is_empty() {
            assert!(body.contains("\"Err\""), "parent {id:.40?}: {body}");
        }
        let (_, body) = post(
            &sock,
            "/GraphDriver.Exists",
            serde_json::json!({ "ID": id }).to_string().as_bytes(),
        );
        assert!(body.contains("\"Exists\":false"), "{body}");
        let q = format!("/GraphDriver.ApplyDiff?id={id}&parent=");
        if !q.contains(['\u{0}', ' ']) && q.len() < 8000 {
            let (st, body) = post(&sock, &q, b"not a tar");
            assert!(
                st >= 400 || body.contains("\"Err\""),
                "{q:.60}: {st} {body}"
            );
        }
        // Only the valid ID may have been created by the parent case
        // (with an empty parent); undo it.
        let _ = post(
            &sock,
            "/GraphDriver.Remove",
            format!(r#"{{"ID":"{}"}}"#, "c".repeat(64)).as_bytes(),
        );
    }
    // Garbage JSON, wrong types, oversized bodies, unknown methods.
    for (path, body) in [
        ("/GraphDriver.Create", &b"{not json"[..]),
        ("/GraphDriver.Create", br#"{"ID": 5}"#),
        ("/GraphDriver.Get", br#""just a string""#),
        ("/GraphDriver.Nope", b"{}"),
        ("/../../etc/passwd", b"{}"),
    ] {
        let (st, b) = post(&sock, path, body);
        assert!(st >= 400 && b.contains("\"Err\""), "{path}: {st} {b}");
    }
    let big = vec![b' '; 3 << 20];
    let (st, _) = post(&sock, "/GraphDriver.Status", &big);
    assert!(st >= 400, "a 3 MiB JSON body is refused: {st}");
    // Garbage HTTP.
    let (st, _) = raw(&sock, b"\x00\x01\x02 garbage\r\n\r\n");
    assert!(st == 0 || st >= 400, "{st}");
    let (st, _) = raw(
        &sock,
        b"GET /Plugin.Activate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(st >= 400, "{st}");
    // Hostile layer tars for the valid layer: path traversal, absolute
    // path, garbage, truncated.
    let mut trav = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    {
        let name = b"../../../../tmp/nvtier-escape";
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name);
    }
    h.set_cksum();
    trav.append(&h, &b"evil"[..]).expect("append");
    let trav = trav.into_inner().expect("tar");
    let mut truncated = trav.clone();
    truncated.truncate(700);
    for (what, body) in [
        ("traversal", trav.as_slice()),
        ("truncated", truncated.as_slice()),
        ("garbage", &b"\x00garbage garbage garbage"[..]),
    ] {
        let (st, b) = post(
            &sock,
            &format!("/GraphDriver.ApplyDiff?id={good}&parent="),
            body,
        );
        assert!(b.contains("\"Err\""), "{what}: {st} {b}");
    }
    assert!(!Path::new("/tmp/nvtier-escape").exists());
    let after = snapshot(&eng.bed);
    assert_eq!(before, after, "hostile requests changed the disk");
    // Still serving.
    let (st, body) = post(
        &sock,
        "/GraphDriver.Exists",
        format!(r#"{{"ID":"{good}"}}"#).as_bytes(),
    );
    assert_eq!(st, 200, "plugin log:\n{}", eng.plugin_log());
    assert!(body.contains("\"Exists\":true"), "{body}");
}

#[test]
fn docker_plugin_budget_exhaustion_falls_back_to_disk() {
    // 2 MiB of pmem: the 4 MiB and 2 MiB layers cannot fit.
    let eng = Engine::up("dkbud", "2M", true);
    let r = eng.bed.push("dkimg", SPEC);
    // nvtier pulls first; Docker's ApplyDiffs then find every layer in the
    // store and reuse it (stored once), and `nvtier rm` keeps them.
    eng.bed.nvtier_ok(&["pull", &r]);
    eng.docker_ok(&["pull", &r]);
    assert_eq!(
        eng.bed.nvtier_json(&["layers"]).as_array().map(Vec::len),
        Some(4)
    );
    eng.bed.nvtier_ok(&["rm", &r]);
    assert_eq!(
        eng.bed.nvtier_json(&["layers"]).as_array().map(Vec::len),
        Some(4)
    );
    assert!(
        eng.plugin_log().contains("reusing it"),
        "{}",
        eng.plugin_log()
    );
    eng.docker_ok(&["rmi", &r]);
    assert_eq!(
        eng.bed.nvtier_json(&["layers"]).as_array().map(Vec::len),
        Some(0)
    );
    // Now Docker alone, on a 2 MiB budget.
    eng.docker_ok(&["pull", &r]);
    let st = eng.bed.nvtier_json(&["status"]);
    assert!(
        st["pmem_used_bytes"].as_u64().expect("used") <= 2 << 20,
        "{st:#}"
    );
    let layers = eng.bed.nvtier_json(&["layers"]);
    let big_on_disk = layers
        .as_array()
        .expect("layers")
        .iter()
        .filter(|l| l["file_bytes"].as_u64().expect("bytes") >= 2 << 20)
        .all(|l| l["tier"] == "disk");
    assert!(big_on_disk, "{layers:#}");
    let out = eng.run_sh(
        &r,
        "head -c 20 /data/layer1.bin | wc -c; cat /data/layer2.txt",
    );
    assert!(out.starts_with("20\nnvtier testbed layer 2"), "{out}");
    assert!(eng.bed.leftovers().is_empty(), "{:?}", eng.bed.leftovers());
    let spool = eng.bed.state.join("graph/spool");
    assert_eq!(fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0), 0);
}

/// Docker 20.10 with the plugin hosted by `nvtier serve`: an ordinary
/// `docker run` is recorded by the daemon (no `nvtier trace`), the image is
/// migrated, and the next container of it mounts tiered (metadata layer and
/// data-only layers under its own and its init layer), reading the hot
/// files from pmem. `docker rmi` then removes the record the recording made.
#[test]
fn docker_run_through_the_plugin_is_recorded_and_tiered() {
    let eng = Engine::up_served("dkrec", "256M", "migrate_interval_s = 3600\n");
    let r = eng.bed.push_seed("dkrec", "busybox,2M,1M,1M", 17);
    eng.docker_ok(&["pull", &r]);
    let out = eng.run_sh(&r, "cat /data/layer1.txt; cat /data/layer3.bin > /dev/null");
    assert!(out.contains("layer 1"), "{out}");

    let row = || -> Option<Value> {
        eng.bed
            .nvtier_json(&["profile", "list"])
            .as_array()?
            .iter()
            .find(|r| r["profiled"] == true)
            .cloned()
    };
    wait_for(
        "the recording of docker run",
        Duration::from_secs(30),
        || row().is_some_and(|r| r["runs"] == 1),
    );
    let name = row()
        .and_then(|r| r["image"].as_str().map(str::to_string))
        .expect("profiled image");
    assert!(name.starts_with("engine/"), "{name}");
    let prof = eng.bed.nvtier_json(&["profile", "show", &name]);
    let paths: BTreeSet<String> = prof["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str().map(str::to_string))
        .collect();
    for want in ["/bin/busybox", "/data/layer1.txt", "/data/layer3.bin"] {
        assert!(paths.contains(want), "{want} missing from {paths:?}");
    }
    assert!(!paths.contains("/data/layer2.bin"), "{paths:?}");

    wait_for("the migration", Duration::from_secs(60), || {
        let st = eng.bed.nvtier_json(&["status"]);
        st["recordings"].as_array().is_some_and(|a| a.is_empty())
            && st["migrations_pending"]
                .as_array()
                .is_some_and(|a| a.is_empty())
            && st["pmem_hot_bytes"].as_u64().unwrap_or(0) > 0
    });
    let id = eng.docker_ok(&["run", "-d", "--network", "none", &r, "sleep", "300"]);
    let id = id.trim();
    let tiered: Vec<Value> = eng
        .graph_records()
        .into_values()
        .filter(|v| v["tiering"].is_object())
        .collect();
    assert_eq!(tiered.len(), 1, "the container's layer mounts tiered");
    let meta = eng.bed.pmem.join("meta");
    let mi = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        mi.lines()
            .any(|l| l.contains(meta.to_str().expect("utf-8"))),
        "no overlay with the metadata layer in mountinfo"
    );
    let o = eng.docker_ok(&[
        "exec",
        id,
        "sh",
        "-c",
        "cat /data/layer1.txt; sha256sum /data/layer3.bin /data/layer2.bin",
    ]);
    assert!(o.contains("layer 1"), "{o}");
    // Byte-exact through the tiered mount: a hot file (from pmem) and a
    // cold one (from its disk base).
    let rootfs = nvtier_testbed::bed::reference_rootfs("dkrec");
    for f in ["data/layer3.bin", "data/layer2.bin"] {
        let sum = hex::encode(sha2::Sha256::digest(
            fs::read(rootfs.join(f)).expect("reference"),
        ));
        assert!(o.contains(&format!("{sum}  /{f}")), "{f}: {o}");
    }
    eng.docker_ok(&["rm", "-f", id]);
    assert!(
        eng.graph_records().values().all(|v| v["tiering"].is_null()),
        "tiering released with the container's layer"
    );
    eng.docker_ok(&["rmi", &r]);
    wait_for("the engine record to go", Duration::from_secs(20), || {
        eng.bed
            .nvtier_json(&["images"])
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
}

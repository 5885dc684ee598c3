//! Root integration tests of the Kubernetes path: containerd 1.7 (trixie,
//! via `testbed/engines.sh`) with its CRI plugin enabled and nvtier as the
//! CRI snapshotter, driven over CRI gRPC (runtime.v1 `RuntimeService` and
//! `ImageService`, the `k8s-cri` crate) the way kubelet drives it. Each
//! test brings up its own tiers, registry, `nvtier serve` and containerd on
//! private sockets and directories; pods, containers, daemons, mounts and
//! cgroups are removed on drop, also when the test fails.

mod common;
mod engines;

use common::{check_lass_rule, Bed};
use engines::state::{assert_all_freed, assert_consistent, image_hashes, snapshot_records};
use engines::*;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::Value;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// The pause image's command: it must stay alive while the pod exists
/// (containerd stops the sandbox with SIGKILL).
const PAUSE_CMD: &str = "sleep 3600";

/// The CRI plugin's configuration for one test: nvtier as the snapshotter
/// with the snapshot annotations that carry the image reference, the pause
/// image from the test registry, the OOM-score restriction these machines
/// need, and plain HTTP for the test registry (`config_path` hosts files).
fn cri_toml(bed: &Bed, pause: &str, auth_host: Option<&str>) -> String {
    let run = run_dir(bed);
    let certs = run.join("certs.d");
    for r in std::iter::once(bed.registry.as_str()).chain(auth_host) {
        let host_dir = certs.join(r);
        fs::create_dir_all(&host_dir).expect("hosts dir");
        fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://{r}\"\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .expect("hosts.toml");
    }
    // No CNI: every pod uses the node's network namespace.
    for d in ["cni-bin", "cni-conf"] {
        fs::create_dir_all(run.join(d)).expect("cni dir");
    }
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "nvtier"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        bin = run.join("cni-bin").display(),
        conf = run.join("cni-conf").display(),
        certs = certs.display(),
    )
}

/// Removes the pods' cgroups (under `cgroup_parent` in every hierarchy)
/// on drop, after containerd and its shims are gone.
struct Cgroups(String);

impl Cgroups {
    fn dirs(&self) -> Vec<PathBuf> {
        fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(self.0.trim_start_matches('/')))
            .filter(|p| p.is_dir())
            .collect()
    }
}

fn rmdir_tree(d: &Path) {
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rmdir_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(d);
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for _ in 0..50 {
            let left = self.dirs();
            if left.is_empty() {
                return;
            }
            for d in &left {
                rmdir_tree(d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("cgroups left: {:?}", self.dirs());
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// A CRI client on containerd's socket, like kubelet's. On drop it stops
/// and removes every pod sandbox left (a failed test), before containerd
/// itself is stopped.
struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn call<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    // The timer is made inside the runtime (it needs its reactor).
    match rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await }) {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("CRI {what}: {:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("CRI {what}: no answer in {CALL_TIMEOUT:?}")),
    }
}

fn must<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl Cri {
    fn connect(sock: &Path) -> Cri {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let s = sock.to_path_buf();
        let ch = rt
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        tokio::net::UnixStream::connect(s.clone())
                    })),
            )
            .expect("connect to containerd's socket");
        let mut c = Cri {
            rt,
            runtime: RuntimeServiceClient::new(ch.clone()),
            images: ImageServiceClient::new(ch),
        };
        // The CRI plugin registers after the socket appears.
        let mut last = String::new();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            match call(
                &c.rt,
                "Version",
                c.runtime.version(cri::VersionRequest::default()),
            ) {
                Ok(v) => {
                    assert_eq!(v.runtime_api_version, "v1", "{v:?}");
                    eprintln!("CRI: {} {}", v.runtime_name, v.runtime_version);
                    return c;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the CRI plugin did not answer: {last}");
    }

    fn spec(image: &str) -> Option<cri::ImageSpec> {
        Some(cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        })
    }

    /// `PullImage`: the image ref (`sha256:<config digest>`).
    fn pull(&mut self, image: &str) -> String {
        let r = must(call(
            &self.rt,
            "PullImage",
            self.images.pull_image(cri::PullImageRequest {
                image: Cri::spec(image),
                ..Default::default()
            }),
        ));
        r.image_ref
    }

    fn image_status(&mut self, image: &str) -> Option<cri::Image> {
        must(call(
            &self.rt,
            "ImageStatus",
            self.images.image_status(cri::ImageStatusRequest {
                image: Cri::spec(image),
                verbose: false,
            }),
        ))
        .image
    }

    fn remove_image(&mut self, image: &str) {
        must(call(
            &self.rt,
            "RemoveImage",
            self.images.remove_image(cri::RemoveImageRequest {
                image: Cri::spec(image),
            }),
        ));
    }

    fn run_pod(&mut self, cfg: &cri::PodSandboxConfig) -> String {
        must(call(
            &self.rt,
            "RunPodSandbox",
            self.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            }),
        ))
        .pod_sandbox_id
    }

    fn stop_remove_pod(&mut self, id: &str) -> Result<(), String> {
        call(
            &self.rt,
            "StopPodSandbox",
            self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }),
        )?;
        call(
            &self.rt,
            "RemovePodSandbox",
            self.runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_string(),
                }),
        )?;
        Ok(())
    }

    /// `CreateContainer` + `StartContainer` of `cmd` in pod `pod`; its id.
    fn start(
        &mut self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        name: &str,
        image: &str,
        cmd: &[&str],
    ) -> String {
        let cfg = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Cri::spec(image),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let id = must(call(
            &self.rt,
            "CreateContainer",
            self.runtime.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            }),
        ))
        .container_id;
        must(call(
            &self.rt,
            "StartContainer",
            self.runtime.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }),
        ));
        id
    }

    fn status(&mut self, id: &str) -> cri::ContainerStatus {
        must(call(
            &self.rt,
            "ContainerStatus",
            self.runtime.container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        ))
        .status
        .expect("container status")
    }

    /// Wait for container `id` to exit; its status.
    fn wait_exit(&mut self, id: &str, secs: u64) -> cri::ContainerStatus {
        let t = Instant::now();
        loop {
            let s = self.status(id);
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "container {id} still {:?} after {secs} s",
                s.state
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> String {
        let r = must(call(
            &self.rt,
            "ExecSync",
            self.runtime.exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            }),
        ));
        assert_eq!(
            r.exit_code,
            0,
            "exec {cmd:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    fn stop_remove_container(&mut self, id: &str) {
        must(call(
            &self.rt,
            "StopContainer",
            self.runtime.stop_container(cri::StopContainerRequest {
                container_id: id.to_string(),
                timeout: 0,
            }),
        ));
        must(call(
            &self.rt,
            "RemoveContainer",
            self.runtime.remove_container(cri::RemoveContainerRequest {
                container_id: id.to_string(),
            }),
        ));
    }

    fn pod_ids(&mut self) -> Result<Vec<String>, String> {
        Ok(call(
            &self.rt,
            "ListPodSandbox",
            self.runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest::default()),
        )?
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
    }

    /// `ImageFsInfo`: the image file system's path and used bytes.
    fn image_fs(&mut self) -> (String, u64) {
        let r = must(call(
            &self.rt,
            "ImageFsInfo",
            self.images
                .image_fs_info(cri::ImageFsInfoRequest::default()),
        ));
        let fs = r.image_filesystems.first().expect("an image file system");
        (
            fs.fs_id
                .as_ref()
                .map(|f| f.mountpoint.clone())
                .unwrap_or_default(),
            fs.used_bytes.as_ref().map_or(0, |u| u.value),
        )
    }

    fn image_tags(&mut self) -> Vec<String> {
        let mut v: Vec<String> = must(call(
            &self.rt,
            "ListImages",
            self.images.list_images(cri::ListImagesRequest::default()),
        ))
        .images
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
        v.sort();
        v
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // Pods (and with them their containers) a failed test left.
        if let Ok(ids) = self.pod_ids() {
            for id in ids {
                if let Err(e) = self.stop_remove_pod(&id) {
                    eprintln!("cleanup of pod {id}: {e}");
                }
            }
        }
    }
}

/// A host-network pod (no CNI) with its logs under `log_dir` and its
/// cgroups under `cgroup_parent`.
fn pod_config(name: &str, log_dir: &Path, cgroup_parent: &str) -> cri::PodSandboxConfig {
    fs::create_dir_all(log_dir).expect("log dir");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "nvtier-test".to_string(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The stdout lines of a CRI log file (`TIME STREAM P|F TEXT`), after
/// checking every line's format.
fn cri_log_stdout(path: &Path) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("container log {}: {e}", path.display()));
    let mut out = String::new();
    for l in text.lines() {
        let mut f = l.splitn(4, ' ');
        let (t, stream, tag) = (
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
        );
        let rest = f.next().unwrap_or("");
        assert!(
            t.len() >= 20 && t.as_bytes()[10] == b'T',
            "not a CRI log line: {l:?}"
        );
        assert!(
            stream == "stdout" || stream == "stderr",
            "not a CRI log line: {l:?}"
        );
        assert!(tag == "F" || tag == "P", "not a CRI log line: {l:?}");
        if stream == "stdout" {
            out.push_str(rest);
            if tag == "F" {
                out.push('\n');
            }
        }
    }
    out
}

fn layers_json(bed: &Bed) -> Vec<Value> {
    bed.nvtier_json(&["layers"])
        .as_array()
        .expect("layers array")
        .clone()
}

fn images_json(bed: &Bed) -> Vec<Value> {
    bed.nvtier_json(&["images"])
        .as_array()
        .expect("images array")
        .clone()
}

/// The nvtier image record whose name has `/TAG:`.
fn record_of<'a>(images: &'a [Value], tag: &str) -> Option<&'a Value> {
    images.iter().find(|i| {
        i["name"]
            .as_str()
            .is_some_and(|n| n.contains(&format!("/{tag}:")))
    })
}

/// The pull report of the image with `/TAG:` in its name.
fn pull_report(bed: &Bed, tag: &str) -> Value {
    common::pull_reports(bed)
        .into_iter()
        .find(|r| {
            r["image"]
                .as_str()
                .is_some_and(|n| n.contains(&format!("/{tag}:")))
        })
        .unwrap_or_else(|| panic!("no pull report of {tag}"))
}

fn chain_ids(report: &Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["chain_id"].as_str().expect("chain_id").to_string())
        .collect()
}

fn stored_chain_ids(bed: &Bed) -> Vec<String> {
    let mut v: Vec<String> = layers_json(bed)
        .iter()
        .map(|l| l["chain_id"].as_str().expect("chain_id").to_string())
        .collect();
    v.sort();
    v
}

/// One node: tiers and registry, `nvtier serve`, containerd 1.7 with the
/// CRI plugin on nvtier, and a CRI client. Dropped in reverse order: pods,
/// containerd (and its shims and mounts), nvtier, cgroups, run dir.
struct Node {
    cri: Cri,
    ctd: Containerd,
    nv: Daemon,
    cgroups: Cgroups,
    cgroup_parent: String,
    auth: Option<common::auth::AuthRegistry>,
    _rd: RunDir,
    bed: Bed,
    pause: String,
}

impl Node {
    fn up(tag: &str, rate: &str) -> Node {
        Self::up_with(tag, rate, false)
    }

    /// With `auth`: a second registry behind basic auth over the bed's
    /// registry storage (port 5001), plain HTTP to it and its credentials
    /// in containerd's CRI registry config, which nvtier reads
    /// (`containerd_config`).
    fn up_with(tag: &str, rate: &str, auth: bool) -> Node {
        let eng = trixie_engines();
        let bin = PathBuf::from(&eng["ENGINES_BIN"]);
        let bed = Bed::up(tag, rate, "256M");
        let rd = make_run_dir(&bed);
        let cgroup_parent = format!("/nvtier-cri-{}", bed.name);
        let cgroups = Cgroups(cgroup_parent.clone());
        let sock = write_serve_config(&bed, "256M", &containerd_root(&bed));
        let mut cri_cfg = String::new();
        let auth_reg = auth.then(|| common::auth::AuthRegistry::start(&bed, &run_dir(&bed)));
        let auth_host = auth_reg.as_ref().map(|r| r.host.clone());
        if let Some(h) = &auth_host {
            let text = fs::read_to_string(&bed.config).expect("config");
            let old = format!("insecure_registries = [{:?}]", bed.registry);
            let text = text.replace(
                &old,
                &format!("insecure_registries = [{:?}, {h:?}]", bed.registry),
            );
            fs::write(
                &bed.config,
                format!(
                    "{text}docker_config = \"\"\ncontainerd_config = {:?}\n",
                    run_dir(&bed).join("containerd.toml")
                ),
            )
            .expect("config");
            cri_cfg = format!(
                "  [plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{h}\".auth]\n    username = {:?}\n    password = {:?}\n",
                common::auth::USER,
                common::auth::PASSWORD
            );
        }
        let nv = start_nvtier(&bed, &sock, "nvtier");
        // The pause image: a busybox base (shared with the test images)
        // and a layer of its own, like a real pause image.
        let pause = bed.push_cmd("cripause", "busybox,64K", 77, Some(PAUSE_CMD));
        let toml = format!("{}{cri_cfg}", cri_toml(&bed, &pause, auth_host.as_deref()));
        let ctd = Containerd::start_with(&bed, &sock, Some(&bin), Some(&toml));
        let v = ctd.ctr_ok(&["version"]);
        assert!(v.contains("1.7.24"), "{v}");
        let cri = Cri::connect(&ctd.sock);
        Node {
            cri,
            ctd,
            nv,
            cgroups,
            cgroup_parent,
            auth: auth_reg,
            _rd: rd,
            bed,
            pause,
        }
    }

    fn pod(&self, name: &str) -> cri::PodSandboxConfig {
        pod_config(
            name,
            &run_dir(&self.bed).join("pods").join(name),
            &self.cgroup_parent,
        )
    }

    fn wait_images(&self, what: &str, n: usize) {
        wait_for(what, 30, || images_json(&self.bed).len() == n);
    }
}

/// kubelet's path end to end: `PullImage` is served by nvtier's own pull
/// (LASS on the recorded timeline); `RunPodSandbox` pulls the pause image
/// through nvtier too; a container's output (CRI log) matches the image's
/// files; after the pod and `RemoveImage` (kubelet's image GC), nvtier's
/// records and layers are gone.
#[test]
fn cri_pull_run_remove() {
    let t0 = Instant::now();
    let mut n = Node::up("cri", "100mbit");
    let img = n.bed.push("crim", "busybox,8M,4M,12M,2M,1M");

    // 1. PullImage: nvtier pulls the image itself.
    let t = Instant::now();
    let image_ref = n.cri.pull(&img);
    eprintln!("CRI PullImage of {img} at 100mbit: {:?}", t.elapsed());
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let images = images_json(&n.bed);
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["origin"], "engine", "{images:?}");
    assert_eq!(images[0]["layers"], 6, "{images:?}");
    let rep = pull_report(&n.bed, "crim");
    check_lass_rule(&rep);
    // The report's tiers follow the streamed LASS rule (checked above);
    // the store holds each layer where the report says.
    let layers = layers_json(&n.bed);
    assert_eq!(layers.len(), 6, "{layers:?}");
    for l in rep["layers"].as_array().expect("layers") {
        let i = l["index"].as_u64().expect("index") as usize;
        let want = l["tier"].as_str().expect("tier");
        let stored = layers
            .iter()
            .find(|x| x["chain_id"] == l["chain_id"])
            .expect("stored layer");
        assert_eq!(stored["tier"], want, "layer {i}: {stored}");
        assert!(
            stored["blob_digest"].is_string(),
            "not pulled by nvtier: {stored}"
        );
    }
    eprintln!(
        "LDL {}; pmem {} B, disk {} B, stored_done {} ms",
        rep["ldl_index"], rep["pmem_bytes"], rep["disk_bytes"], rep["stored_done_ms"]
    );
    // containerd skipped the layer blobs; nvtier writes them into its
    // content store after the pull (content-store parity, CRI namespace).
    let digests: Vec<String> = rep["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    wait_for(
        "the layer blobs in containerd's k8s.io content store",
        60,
        || {
            let content = n.ctd.ctr_ok(&["-n", "k8s.io", "content", "ls", "-q"]);
            digests.iter().all(|d| content.contains(d.as_str()))
        },
    );
    let st = n
        .cri
        .image_status(&img)
        .expect("ImageStatus of the pulled image");
    assert_eq!(st.id, image_ref);

    // 2. RunPodSandbox (node network): the pause image comes from the test
    //    registry through sandbox_image, and nvtier pulls it too.
    let pod_cfg = n.pod("p1");
    let pod = n.cri.run_pod(&pod_cfg);
    let images = images_json(&n.bed);
    assert_eq!(images.len(), 2, "{images:?}");
    let p = record_of(&images, "cripause").expect("the pause image in nvtier images");
    assert_eq!(p["origin"], "engine", "{p}");
    let prep = pull_report(&n.bed, "cripause");
    let pause_chain = chain_ids(&prep);
    assert_eq!(pause_chain.len(), 2);
    assert_eq!(pause_chain[0], chain_ids(&rep)[0], "busybox base shared");
    assert!(n.cri.image_status(&n.pause).is_some());
    assert!(
        !n.cgroups.dirs().is_empty(),
        "the pod's cgroups are under {}",
        n.cgroup_parent
    );

    // 3. A container of the image: its CRI log holds the sha256 of every
    //    file of the image, as umoci unpacks it (the CRI's own /etc files
    //    are bind mounts over the image's).
    let mut want = image_hashes("crim");
    want.remove("/etc/hostname");
    let mut cmd = vec!["sha256sum".to_string()];
    cmd.extend(want.keys().cloned());
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let c1 = n.cri.start(&pod, &pod_cfg, "sums", &img, &cmd);
    let s = n.cri.wait_exit(&c1, 60);
    assert_eq!(s.exit_code, 0, "{s:?}");
    let log = PathBuf::from(&s.log_path);
    assert_eq!(
        log,
        run_dir(&n.bed).join("pods/p1/sums/0.log"),
        "log path under the pod's log_directory"
    );
    let out = cri_log_stdout(&log);
    engines::state::assert_hashes(&out, &want, "CRI container");
    let active = snapshot_records(&n.bed)
        .into_iter()
        .filter(|r| r["kind"] == "active")
        .count();
    assert_eq!(active, 2, "the sandbox's and the container's rootfs");
    // kubelet's image GC reads the image file system from ImageFsInfo:
    // containerd names a path for the snapshotter that a proxy plugin does
    // not have (see docs/kubernetes.md), and sums nvtier's Usage answers
    // (refreshed every 10 s).
    let fs_path = containerd_root(&n.bed).join("io.containerd.snapshotter.v1.nvtier");
    let t = Instant::now();
    let mut fs = n.cri.image_fs();
    while fs.1 == 0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        fs = n.cri.image_fs();
    }
    assert_eq!(Path::new(&fs.0), fs_path, "{fs:?}");
    assert!(!fs_path.exists(), "{fs:?}");
    assert!(fs.1 > 0, "no used bytes from nvtier's Usage: {fs:?}");
    eprintln!("ImageFsInfo: {fs:?}");

    // 4. The pod goes, then the images (kubelet's image GC): nvtier's
    //    record of the image and its own layers go; the base layer stays
    //    while the pause image uses it.
    n.cri.stop_remove_container(&c1);
    must(n.cri.stop_remove_pod(&pod));
    assert!(n.cri.pod_ids().expect("pods").is_empty());
    n.cri.remove_image(&img);
    assert!(n.cri.image_status(&img).is_none());
    n.wait_images("the image's record to go", 1);
    let left = images_json(&n.bed);
    assert!(record_of(&left, "cripause").is_some(), "{left:?}");
    let mut want_layers = pause_chain.clone();
    want_layers.sort();
    wait_for("the image's own layers to be freed", 30, || {
        stored_chain_ids(&n.bed) == want_layers
    });
    assert_consistent(&n.bed, "after RemoveImage");
    n.cri.remove_image(&n.pause);
    n.wait_images("the pause image's record to go", 0);
    wait_for("every snapshot to go", 30, || {
        snapshot_records(&n.bed).is_empty()
    });
    assert_all_freed(&n.bed, "after RemoveImage of every image", 30);
    assert!(n.cri.image_tags().is_empty());
    assert!(n.nv.alive(), "nvtier serve died:\n{}", n.nv.log_text());
    assert!(
        n.nv.log_text().contains("its nvtier record goes too"),
        "{}",
        n.nv.log_text()
    );
    drop(n);
    eprintln!("cri_pull_run_remove: {:?}", t0.elapsed());
}

/// An image another name or a running container still uses stays in
/// nvtier after `RemoveImage`/`images rm` of one name, and goes with the
/// next containerd GC after its last user.
#[test]
fn cri_image_in_use_stays() {
    let t0 = Instant::now();
    let mut n = Node::up("cruse", "1gbit");
    let a = n.bed.push("cria", "busybox,2M,1M");
    let b = n.bed.push_seed("crib", "busybox,3M,1M", 5);
    // A second tag of cria's manifest.
    let a2 = a.replace(":latest", ":v2");
    common::sh(
        "push-image.sh",
        &[&format!("{}:cria", common::oci_dir().display()), &a2],
    );

    // Two names of one image: the first pull goes through nvtier, the
    // second finds every layer in containerd already.
    let id1 = n.cri.pull(&a);
    let id2 = n.cri.pull(&a2);
    assert_eq!(id1, id2);
    let st = n.cri.image_status(&a2).expect("status");
    assert_eq!(st.repo_tags.len(), 2, "{st:?}");
    let images = images_json(&n.bed);
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["origin"], "engine");
    let a_layers = {
        let mut v = chain_ids(&pull_report(&n.bed, "cria"));
        v.sort();
        v
    };

    // Removing one name (containerd's image service, as `ctr`/nerdctl
    // do) keeps the image: the other name still holds its snapshots.
    n.ctd
        .ctr_ok(&["-n", "k8s.io", "images", "rm", "--sync", &a]);
    assert!(n.cri.image_status(&a2).is_some());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(images_json(&n.bed).len(), 1, "another name still uses it");
    assert_eq!(stored_chain_ids(&n.bed), a_layers);

    // Both names again (containerd has every layer: nvtier pulls nothing).
    assert_eq!(n.cri.pull(&a), id1);
    assert_eq!(n.cri.image_status(&a).expect("status").repo_tags.len(), 2);
    assert_eq!(images_json(&n.bed).len(), 1);

    // A running container keeps its image after RemoveImage.
    let pod_cfg = n.pod("p2");
    let pod = n.cri.run_pod(&pod_cfg);
    n.cri.pull(&b);
    n.wait_images("the records of cria, crib and the pause image", 3);
    let c = n
        .cri
        .start(&pod, &pod_cfg, "sleeper", &b, &["sleep", "3600"]);
    // CRI's RemoveImage removes every name of the image (by image ID, as
    // kubelet's image GC does): the last name of cria goes, and crib goes
    // from containerd while its container runs.
    n.cri.remove_image(&a2);
    assert!(
        n.cri.image_status(&a).is_none(),
        "RemoveImage removes every name"
    );
    assert!(n.cri.image_status(&id1).is_none());
    n.wait_images("cria's record to go", 2);
    wait_for("cria's own layers to be freed", 30, || {
        !stored_chain_ids(&n.bed).contains(a_layers.last().expect("top"))
    });
    n.cri.remove_image(&b);
    assert!(n.cri.image_status(&b).is_none());
    std::thread::sleep(Duration::from_secs(1));
    let images = images_json(&n.bed);
    assert!(
        record_of(&images, "crib").is_some(),
        "a running container's image must stay: {images:?}"
    );
    let out = n.cri.exec_sync(&c, &["cat", "/data/layer2.txt"]);
    assert!(out.contains("nvtier testbed layer 2"), "{out}");
    let s = n.cri.status(&c);
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);

    // The last user goes; the next GC (here: RemoveImage of the pause image
    // after its pod) frees crib's snapshots, record and layers.
    n.cri.stop_remove_container(&c);
    must(n.cri.stop_remove_pod(&pod));
    n.cri.remove_image(&n.pause);
    n.wait_images("every record to go", 0);
    wait_for("every snapshot to go", 30, || {
        snapshot_records(&n.bed).is_empty()
    });
    assert_all_freed(&n.bed, "after the last user", 30);
    assert!(n.nv.alive(), "nvtier serve died:\n{}", n.nv.log_text());
    drop(n);
    eprintln!("cri_image_in_use_stays: {:?}", t0.elapsed());
}

/// A private registry on the CRI path: `PullImage` with credentials (as
/// kubelet sends them) of an image behind basic auth is served by nvtier's
/// LASS pull, with the node's credentials from containerd's CRI registry
/// config, and no fallback; a container runs on it.
#[test]
fn cri_pull_from_a_registry_behind_auth() {
    let mut n = Node::up_with("crau", "100mbit", true);
    let plain = n.bed.push("crauth", "busybox,8M,4M,2M");
    let img = n.auth.as_ref().expect("auth registry").reference(&plain);
    let r = n.cri.images.pull_image(cri::PullImageRequest {
        image: Cri::spec(&img),
        auth: Some(cri::AuthConfig {
            username: common::auth::USER.into(),
            password: common::auth::PASSWORD.into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let image_ref = must(call(&n.cri.rt, "PullImage", r)).image_ref;
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let images = images_json(&n.bed);
    let rec = images
        .iter()
        .find(|i| i["name"] == img.as_str())
        .unwrap_or_else(|| panic!("nvtier did not pull {img}: {images:?}"));
    assert_eq!(rec["origin"], "engine", "{rec}");
    let rep = pull_report(&n.bed, "crauth");
    assert!(
        rep["credentials"]
            .as_str()
            .is_some_and(|c| c.starts_with("containerd config")),
        "{rep}"
    );
    check_lass_rule(&rep);
    let st = n.bed.nvtier_json(&["status"]);
    assert_eq!(st["engine_fallbacks"], serde_json::json!([]), "{st}");
    // A container on it.
    let pod_cfg = n.pod("pa");
    let pod = n.cri.run_pod(&pod_cfg);
    let cid = n
        .cri
        .start(&pod, &pod_cfg, "c1", &img, &["cat", "/data/layer2.txt"]);
    let s = n.cri.wait_exit(&cid, 60);
    assert_eq!(s.exit_code, 0, "{s:?}");
    n.cri.stop_remove_container(&cid);
    must(n.cri.stop_remove_pod(&pod));
}

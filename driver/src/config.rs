//! The TOML configuration (`/etc/nvtier/config.toml`).

use crate::error::{Error, Result};
use nvtier_policy::Placement;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/nvtier/config.toml";

/// Where the effective configuration came from, for error messages.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub pmem_dir: PathBuf,
    pub disk_dir: PathBuf,
    pub pmem_budget: u64,
    pub max_concurrent_downloads: usize,
    pub insecure_registries: Vec<String>,
    pub placement: Placement,
    /// containerd proxy snapshotter socket (`nvtier serve`); `None` = off.
    pub snapshotter_socket: Option<PathBuf>,
    /// Docker legacy graph-driver plugin socket; `None` = off.
    pub docker_plugin_socket: Option<PathBuf>,
    /// containerd's root directory: the snapshotter watches its content
    /// ingest area to see whether downloads are still running (LASS on the
    /// engine's own unpack path).
    pub containerd_root: PathBuf,
    /// containerd's gRPC socket: where the blobs of images nvtier pulls for
    /// the engine are written into containerd's content store.
    pub containerd_socket: PathBuf,
    /// Write the blobs nvtier pulls for containerd/Docker into containerd's
    /// content store (in the background, after the pull). Off: containerd
    /// has no layer blobs of those images, so `docker images`, `docker
    /// save` and `docker push` do not see them.
    pub content_store_blobs: bool,
    /// File-granular hot-file tiering: when on and the kernel has
    /// overlayfs data-only layers, migrated images mount as a flattened
    /// metadata layer plus data layers. Off = whole-layer placement only.
    pub tiering: bool,
    /// Static layer classification at pull time: execution-engine and
    /// application layers (by the image history) go to pmem too.
    pub static_placement: bool,
    /// Migration copy rate limit in bytes/s (0 = unlimited).
    pub migrate_rate: u64,
    /// How fast a layer is stored on the disk tier while it streams, in
    /// compressed bytes/s (inflate, extraction, the kept blob's write-back).
    /// LASS puts a layer on pmem when storing it on disk at this rate
    /// would end after the image's last byte.
    pub disk_store_rate: u64,
    /// `nvtier serve`: re-trace an image whose profile is older than this
    /// many seconds (0 = only images without a profile).
    pub profile_max_age_s: u64,
    /// `nvtier serve`: how often the background migration re-plans, seconds.
    pub migrate_interval_s: u64,
    /// `nvtier serve`: record the files a container touches while it
    /// cold-starts, for images whose profile is missing or stale
    /// (eBPF, filtered to the container's root). Default on.
    pub record_starts: bool,
    /// A recording ends this long after the last new file (ms).
    pub record_quiet_ms: u64,
    /// A recording ends at the latest this long after the start (s).
    pub record_max_s: u64,
    /// At most this many recordings at once; further starts are skipped.
    pub record_max_concurrent: usize,
    /// `nvtier serve`: how often the tiers' identity and content are
    /// checked and lost content repaired, seconds (0 = only at start).
    pub repair_interval_s: u64,
    /// Tier of containers' writable layers (upper/work directories):
    /// `disk` (default) or `pmem`. On pmem a cold start reads nothing from
    /// the disk tier, at the cost of pmem for what containers write (not
    /// charged to `pmem_budget`).
    pub upper_tier: crate::tier::TierKind,
    /// When a layer pulled onto the disk tier is published: `background`
    /// (default: as soon as it is extracted; its blob is kept until the
    /// write-back is done, see `store::durable`) or `before-publish`
    /// (`syncfs` first, as pmem layers always are).
    pub disk_layer_sync: DiskLayerSync,
    /// Registry credentials, the way Docker keeps them: `docker login`'s
    /// `config.json` (inline `auth`, `credsStore`, `credHelpers`). `None` =
    /// not read. Default: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`, else `/root/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// containerd's own config file: its CRI registry `auth` entries and
    /// the `Authorization` headers of its `config_path` hosts files are
    /// used for registries with no Docker credentials. `None` = not read.
    pub containerd_config: Option<PathBuf>,
    /// Pulls look up the image's hot profile in the registry (an OCI
    /// artifact referring to the image) and place its hot files on pmem
    /// at once. Default on.
    pub profiles_from_registry: bool,
    /// `nvtier serve` pushes a profile to the registry when it changes.
    /// Default off: it writes to a registry.
    pub profile_push: bool,
    /// `HOST/REPO` where profiles are pushed and also looked up (default:
    /// the image's own repository only).
    pub profiles_repo: Option<String>,
    /// `nvtier serve`: where Prometheus scrapes `GET /metrics` (host:port);
    /// `None` = off (the default).
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// See [`Config::disk_layer_sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskLayerSync {
    Background,
    BeforePublish,
}

pub const DEFAULT_SNAPSHOTTER_SOCKET: &str = "/run/nvtier/snapshotter.sock";
pub const DEFAULT_DOCKER_PLUGIN_SOCKET: &str = "/run/docker/plugins/nvtier.sock";
pub const DEFAULT_CONTAINERD_ROOT: &str = "/var/lib/containerd";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// 256 MiB/s: a fraction of a pmem tier's bandwidth, about an HDD's.
pub const DEFAULT_MIGRATE_RATE: u64 = 256 << 20;
/// See [`Config::record_quiet_ms`].
pub const DEFAULT_RECORD_QUIET_MS: u64 = 3000;
/// 64 MiB/s of compressed bytes: what the testbed's disk tier stores of a
/// real base layer while it streams (see docs/benchmarks.md). Only the
/// starting estimate: a node learns its own rate from its pulls
/// (`store::rates`).
pub const DEFAULT_DISK_STORE_RATE: u64 = 64 << 20;
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// Where Docker's CLI keeps `docker login` credentials for this process:
/// `$DOCKER_CONFIG/config.json`, `$HOME/.docker/config.json`, or root's.
pub fn default_docker_config() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("config.json");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".docker/config.json"),
        None => PathBuf::from("/root/.docker/config.json"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: Option<PathBuf>,
    pmem_dir: Option<PathBuf>,
    disk_dir: Option<PathBuf>,
    pmem_budget: Option<Size>,
    max_concurrent_downloads: Option<i64>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    placement: Option<String>,
    snapshotter_socket: Option<String>,
    docker_plugin_socket: Option<String>,
    containerd_root: Option<PathBuf>,
    containerd_socket: Option<PathBuf>,
    content_store_blobs: Option<bool>,
    tiering: Option<bool>,
    static_placement: Option<bool>,
    migrate_rate: Option<Size>,
    disk_store_rate: Option<Size>,
    profile_max_age_s: Option<u64>,
    record_starts: Option<bool>,
    record_quiet_ms: Option<u64>,
    record_max_s: Option<u64>,
    record_max_concurrent: Option<usize>,
    migrate_interval_s: Option<u64>,
    repair_interval_s: Option<u64>,
    upper_tier: Option<String>,
    disk_layer_sync: Option<String>,
    docker_config: Option<String>,
    containerd_config: Option<String>,
    profiles_from_registry: Option<bool>,
    profile_push: Option<bool>,
    profiles_repo: Option<String>,
    metrics_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(i64),
    Text(String),
}

/// Parse "4G", "512M", "1.5T", "1024" (bytes). Binary units (K = 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].trim().to_ascii_uppercase();
            let unit = unit.trim_end_matches("IB").trim_end_matches('B');
            let m: u64 = match unit {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return None,
            };
            (s[..i].trim(), m)
        }
        None => (s, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    if !f.is_finite() || f < 0.0 {
        return None;
    }
    Some((f * mult as f64) as u64)
}

impl Config {
    /// Load from an explicit path, `NVTIER_CONFIG`, or the default path.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let file = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("NVTIER_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let text = std::fs::read_to_string(&file).map_err(|e| Error::Config {
            file: file.clone(),
            msg: format!(
                "cannot read: {e} (create it, or point --config / NVTIER_CONFIG at one; see README)"
            ),
        })?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config> {
        let err = |msg: String| Error::Config {
            file: file.to_path_buf(),
            msg,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let need = |v: Option<PathBuf>, key: &str| -> Result<PathBuf> {
            let p = v.ok_or_else(|| err(format!("key `{key}` is missing")))?;
            if !p.is_absolute() {
                return Err(err(format!(
                    "key `{key}` must be an absolute path, got {}",
                    p.display()
                )));
            }
            Ok(p)
        };
        let state_dir = need(raw.state_dir, "state_dir")?;
        let pmem_dir = need(raw.pmem_dir, "pmem_dir")?;
        let disk_dir = need(raw.disk_dir, "disk_dir")?;
        if pmem_dir == disk_dir {
            return Err(err(
                "keys `pmem_dir` and `disk_dir` name the same directory".into(),
            ));
        }
        let size = |v: Option<Size>, key: &str| -> Result<Option<u64>> {
            match v {
                None => Ok(None),
                Some(Size::Bytes(n)) if n >= 0 => Ok(Some(n as u64)),
                Some(Size::Bytes(n)) => Err(err(format!("key `{key}` must be >= 0, got {n}"))),
                Some(Size::Text(t)) => parse_size(&t).map(Some).ok_or_else(|| {
                    err(format!(
                        "key `{key}`: cannot parse {t:?} as a size (use bytes or e.g. \"4G\", \"512M\")"
                    ))
                }),
            }
        };
        let pmem_budget = size(raw.pmem_budget, "pmem_budget")?
            .ok_or_else(|| err("key `pmem_budget` is missing (e.g. \"4G\")".into()))?;
        let migrate_rate = size(raw.migrate_rate, "migrate_rate")?.unwrap_or(DEFAULT_MIGRATE_RATE);
        let disk_store_rate = size(raw.disk_store_rate, "disk_store_rate")?
            .filter(|r| *r > 0)
            .unwrap_or(DEFAULT_DISK_STORE_RATE);
        let max_concurrent_downloads = match raw.max_concurrent_downloads {
            None => 3,
            Some(n) if (1..=64).contains(&n) => n as usize,
            Some(n) => {
                return Err(err(format!(
                    "key `max_concurrent_downloads` must be between 1 and 64, got {n}"
                )))
            }
        };
        let placement = match raw.placement {
            None => Placement::Lass,
            Some(p) => p
                .parse()
                .map_err(|e: String| err(format!("key `placement`: {e}")))?,
        };
        let socket = |v: Option<String>, key: &str, default: &str| -> Result<Option<PathBuf>> {
            let v = v.unwrap_or_else(|| default.to_string());
            if v.is_empty() {
                return Ok(None);
            }
            let p = PathBuf::from(&v);
            if !p.is_absolute() || p.file_name().is_none() {
                return Err(err(format!(
                    "key `{key}` must be an absolute socket path (or \"\" to disable), got {v:?}"
                )));
            }
            // sun_path holds 108 bytes including the NUL.
            if v.len() > 107 {
                return Err(err(format!(
                    "key `{key}`: socket path is {} bytes, the limit is 107",
                    v.len()
                )));
            }
            Ok(Some(p))
        };
        let snapshotter_socket = socket(
            raw.snapshotter_socket,
            "snapshotter_socket",
            DEFAULT_SNAPSHOTTER_SOCKET,
        )?;
        let docker_plugin_socket = socket(
            raw.docker_plugin_socket,
            "docker_plugin_socket",
            DEFAULT_DOCKER_PLUGIN_SOCKET,
        )?;
        if snapshotter_socket.is_some() && snapshotter_socket == docker_plugin_socket {
            return Err(err(
                "keys `snapshotter_socket` and `docker_plugin_socket` name the same socket".into(),
            ));
        }
        let containerd_root = raw
            .containerd_root
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_ROOT));
        if !containerd_root.is_absolute() {
            return Err(err(format!(
                "key `containerd_root` must be an absolute path, got {}",
                containerd_root.display()
            )));
        }
        let containerd_socket = raw
            .containerd_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_SOCKET));
        if !containerd_socket.is_absolute() || containerd_socket.as_os_str().len() > 107 {
            return Err(err(format!(
                "key `containerd_socket` must be an absolute socket path of at most 107 bytes, got {}",
                containerd_socket.display()
            )));
        }
        let upper_tier = match raw.upper_tier.as_deref() {
            None | Some("disk") => crate::tier::TierKind::Disk,
            Some("pmem") => crate::tier::TierKind::Pmem,
            Some(o) => {
                return Err(err(format!(
                    "key `upper_tier` must be \"disk\" or \"pmem\", got {o:?}"
                )))
            }
        };
        let disk_layer_sync = match raw.disk_layer_sync.as_deref() {
            None | Some("background") => DiskLayerSync::Background,
            Some("before-publish") => DiskLayerSync::BeforePublish,
            Some(o) => {
                return Err(err(format!(
                    "key `disk_layer_sync` must be \"background\" or \"before-publish\", got {o:?}"
                )))
            }
        };
        let optional_file = |v: Option<String>,
                             key: &str,
                             default: PathBuf|
         -> Result<Option<PathBuf>> {
            match v {
                None => Ok(Some(default)),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => {
                    let p = PathBuf::from(&v);
                    if !p.is_absolute() {
                        return Err(err(format!(
                            "key `{key}` must be an absolute path (or \"\" to not read one), got {v:?}"
                        )));
                    }
                    Ok(Some(p))
                }
            }
        };
        let docker_config =
            optional_file(raw.docker_config, "docker_config", default_docker_config())?;
        let containerd_config = optional_file(
            raw.containerd_config,
            "containerd_config",
            PathBuf::from(DEFAULT_CONTAINERD_CONFIG),
        )?;
        let profiles_repo = match raw.profiles_repo {
            None => None,
            Some(r) if r.is_empty() => None,
            Some(r) => {
                let last = r.rsplit('/').next().unwrap_or("");
                let ok = r.contains('/')
                    && !r.contains('@')
                    && !last.contains(':')
                    && crate::reference::parse(&format!("{r}:latest")).is_ok();
                if !ok {
                    return Err(err(format!(
                        "key `profiles_repo` must be HOST/REPOSITORY without tag or digest, got {r:?}"
                    )));
                }
                Some(r)
            }
        };
        let metrics_address = match raw.metrics_address.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|e| {
                err(format!(
                    "key `metrics_address` must be HOST:PORT with an IP address, e.g. \"127.0.0.1:9464\", got {a:?}: {e}"
                ))
            })?),
        };
        Ok(Config {
            file: file.to_path_buf(),
            state_dir,
            pmem_dir,
            disk_dir,
            pmem_budget,
            max_concurrent_downloads,
            insecure_registries: raw.insecure_registries,
            placement,
            snapshotter_socket,
            docker_plugin_socket,
            containerd_root,
            containerd_socket,
            content_store_blobs: raw.content_store_blobs.unwrap_or(true),
            tiering: raw.tiering.unwrap_or(true),
            static_placement: raw.static_placement.unwrap_or(true),
            migrate_rate,
            disk_store_rate,
            profile_max_age_s: raw.profile_max_age_s.unwrap_or(7 * 24 * 3600),
            migrate_interval_s: raw.migrate_interval_s.unwrap_or(60),
            record_starts: raw.record_starts.unwrap_or(true),
            record_quiet_ms: raw.record_quiet_ms.unwrap_or(DEFAULT_RECORD_QUIET_MS),
            record_max_s: raw.record_max_s.unwrap_or(60).max(1),
            record_max_concurrent: raw.record_max_concurrent.unwrap_or(4).max(1),
            repair_interval_s: raw.repair_interval_s.unwrap_or(30),
            upper_tier,
            disk_layer_sync,
            docker_config,
            containerd_config,
            profiles_from_registry: raw.profiles_from_registry.unwrap_or(true),
            profile_push: raw.profile_push.unwrap_or(false),
            profiles_repo,
            metrics_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("4Q"), None);
        assert_eq!(parse_size("-1G"), None);
    }

    fn parse(t: &str) -> Result<Config> {
        Config::parse(Path::new("/etc/nvtier/config.toml"), t)
    }

    const OK: &str = r#"
state_dir = "/var/lib/nvtier"
pmem_dir = "/mnt/pmem/nvtier"
disk_dir = "/var/lib/nvtier/disk"
pmem_budget = "4G"
insecure_registries = ["10.0.0.2:5000"]
"#;

    #[test]
    fn metrics_address() {
        assert_eq!(parse(OK).expect("ok").metrics_address, None);
        let c = parse(&format!("{OK}metrics_address = \"127.0.0.1:9464\"\n")).expect("set");
        assert_eq!(c.metrics_address.map(|a| a.port()), Some(9464));
        let e = parse(&format!("{OK}metrics_address = \"localhost\"\n")).expect_err("bad");
        assert!(e.to_string().contains("metrics_address"), "{e}");
    }

    #[test]
    fn profile_keys() {
        let c = parse(OK).expect("ok");
        assert!(c.profiles_from_registry && !c.profile_push);
        assert_eq!(c.profiles_repo, None);
        let c = parse(&format!(
            "{OK}profiles_from_registry = false\nprofile_push = true\nprofiles_repo = \"10.0.0.2:5000/team/profiles\"\n"
        ))
        .expect("set");
        assert!(!c.profiles_from_registry && c.profile_push);
        assert_eq!(
            c.profiles_repo.as_deref(),
            Some("10.0.0.2:5000/team/profiles")
        );
        for bad in ["noslash", "10.0.0.2:5000/p@sha256:ab", "Bad Repo/x"] {
            let e = parse(&format!("{OK}profiles_repo = {bad:?}\n")).expect_err(bad);
            assert!(e.to_string().contains("profiles_repo"), "{e}");
        }
    }

    #[test]
    fn credential_files() {
        let c = parse(OK).expect("ok");
        assert_eq!(
            c.containerd_config.as_deref(),
            Some(Path::new(DEFAULT_CONTAINERD_CONFIG))
        );
        assert!(c.docker_config.is_some());
        let c = parse(&format!(
            "{OK}docker_config = \"/etc/nvtier/docker.json\"\ncontainerd_config = \"\"\n"
        ))
        .expect("set");
        assert_eq!(
            c.docker_config.as_deref(),
            Some(Path::new("/etc/nvtier/docker.json"))
        );
        assert_eq!(c.containerd_config, None);
        let e = parse(&format!("{OK}docker_config = \"docker.json\"\n")).expect_err("relative");
        assert!(e.to_string().contains("docker_config"), "{e}");
    }

    #[test]
    fn disk_layer_sync() {
        assert_eq!(
            parse(OK).expect("ok").disk_layer_sync,
            DiskLayerSync::Background
        );
        let c = parse(&format!("{OK}disk_layer_sync = \"before-publish\"\n")).expect("bp");
        assert_eq!(c.disk_layer_sync, DiskLayerSync::BeforePublish);
        let e = parse(&format!("{OK}disk_layer_sync = \"never\"\n")).expect_err("bad value");
        assert!(e.to_string().contains("disk_layer_sync"), "{e}");
    }

    #[test]
    fn upper_tier() {
        assert_eq!(
            parse(OK).expect("ok").upper_tier,
            crate::tier::TierKind::Disk
        );
        let c = parse(&format!("{OK}upper_tier = \"pmem\"\n")).expect("pmem");
        assert_eq!(c.upper_tier, crate::tier::TierKind::Pmem);
        let e = parse(&format!("{OK}upper_tier = \"ssd\"\n")).expect_err("bad tier");
        assert!(e.to_string().contains("upper_tier"), "{e}");
    }

    #[test]
    fn full_config() {
        let c = parse(OK).expect("valid config");
        assert_eq!(c.pmem_budget, 4 << 30);
        assert_eq!(c.max_concurrent_downloads, 3);
        assert_eq!(c.placement, Placement::Lass);
        assert_eq!(c.insecure_registries, vec!["10.0.0.2:5000".to_string()]);
        assert_eq!(
            c.snapshotter_socket.as_deref(),
            Some(Path::new(DEFAULT_SNAPSHOTTER_SOCKET))
        );
        assert_eq!(
            c.docker_plugin_socket.as_deref(),
            Some(Path::new(DEFAULT_DOCKER_PLUGIN_SOCKET))
        );
        assert_eq!(c.containerd_root, Path::new(DEFAULT_CONTAINERD_ROOT));
        assert_eq!(c.containerd_socket, Path::new(DEFAULT_CONTAINERD_SOCKET));
        assert!(c.content_store_blobs);
        assert_eq!(c.disk_store_rate, DEFAULT_DISK_STORE_RATE);
    }

    #[test]
    fn disk_store_rate_parses_and_zero_means_the_default() {
        let c = parse(&format!("{OK}\ndisk_store_rate = \"40M\"")).expect("valid");
        assert_eq!(c.disk_store_rate, 40 << 20);
        let c = parse(&format!("{OK}\ndisk_store_rate = 0")).expect("valid");
        assert_eq!(c.disk_store_rate, DEFAULT_DISK_STORE_RATE);
        let e = parse(&format!("{OK}\ndisk_store_rate = \"fast\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk_store_rate"), "{e}");
    }

    #[test]
    fn content_store_keys() {
        let c = parse(&format!(
            "{OK}containerd_socket = \"/run/x/ctd.sock\"\ncontent_store_blobs = false\n"
        ))
        .expect("valid");
        assert_eq!(c.containerd_socket, Path::new("/run/x/ctd.sock"));
        assert!(!c.content_store_blobs);
        let e = parse(&format!("{OK}containerd_socket = \"ctd.sock\"\n")).expect_err("relative");
        assert!(e.to_string().contains("containerd_socket"), "{e}");
        let e = parse(&format!("{OK}content_store_blobs = \"yes\"\n")).expect_err("not a bool");
        assert!(e.to_string().contains("content_store_blobs"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        let c = Config::parse(
            Path::new("dist/config.example.toml"),
            include_str!("../dist/config.example.toml"),
        )
        .expect("the example config is valid");
        assert_eq!(c.docker_plugin_socket, None);
        assert!(c.snapshotter_socket.is_some());
    }

    #[test]
    fn sockets() {
        let c = parse(&format!(
            "{OK}\nsnapshotter_socket = \"/tmp/s.sock\"\ndocker_plugin_socket = \"\""
        ))
        .expect("valid");
        assert_eq!(
            c.snapshotter_socket.as_deref(),
            Some(Path::new("/tmp/s.sock"))
        );
        assert_eq!(c.docker_plugin_socket, None);
        for bad in [
            "snapshotter_socket = \"rel.sock\"".to_string(),
            format!("snapshotter_socket = \"/{}\"", "x".repeat(120)),
            "snapshotter_socket = \"/a.sock\"\ndocker_plugin_socket = \"/a.sock\"".to_string(),
        ] {
            let e = parse(&format!("{OK}\n{bad}")).unwrap_err().to_string();
            assert!(e.contains("snapshotter_socket"), "{e}");
        }
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse(&OK.replace("\"4G\"", "\"4Q\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/nvtier/config.toml") && e.contains("pmem_budget"),
            "{e}"
        );
        let e = parse(&OK.replace("state_dir = \"/var/lib/nvtier\"", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_dir"), "{e}");
        let e = parse(&format!("{OK}\nmax_concurrent_downloads = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_concurrent_downloads"), "{e}");
        let e = parse(&format!("{OK}\nplacement = \"nvm\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("placement"), "{e}");
        let e = parse(&format!("{OK}\nbogus = 1")).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(&OK.replace("\"/mnt/pmem/nvtier\"", "\"relative\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pmem_dir"), "{e}");
    }
}

//! A small synthetic samples file for the tests, with round numbers:
//! per image a base deploy time B and cold start C; reps 0.9x, 1x, 1.1x.
//!
//! | system | deploy | store after download | cold start | pmem after deploy | after migration |
//! |---|---|---|---|---|---|
//! | docker | B | 0.25 B | C | 0 | 0 |
//! | nvm | 0.78 B | 0.02 B | 0.3 C | P | P |
//! | lass | 0.8 B | 0.02 B | 0.95 C | 0.7 P | 0.7 P |
//! | hot | 0.8 B | 0.02 B | 0.31 C | 0.7 P | 0.1 P |
//!
//! Holes: at 1gbit `hot` has no samples for `nginx`; one docker deploy of
//! `node` at 100mbit failed; `hot` read the disk tier once for `python` at
//! 1gbit.

use serde_json::json;

/// (name, category, B ms, C ms, P bytes)
pub const IMAGES: [(&str, &str, f64, f64, u64); 4] = [
    ("ubuntu", "distro", 4000.0, 600.0, 30_000_000),
    ("python", "language", 10000.0, 1500.0, 300_000_000),
    ("node", "language", 12000.0, 1700.0, 350_000_000),
    ("nginx", "web-server", 6000.0, 900.0, 60_000_000),
];
pub const RATES: [&str; 2] = ["100mbit", "1gbit"];
pub const REPS: [f64; 3] = [0.9, 1.0, 1.1];

fn factors(system: &str) -> (f64, f64, f64, f64, f64) {
    // (deploy, store share of B, cold, pmem after deploy, after migration)
    match system {
        "docker" => (1.0, 0.25, 1.0, 0.0, 0.0),
        "nvm" => (0.78, 0.02, 0.3, 1.0, 1.0),
        "lass" => (0.8, 0.02, 0.95, 0.7, 0.7),
        _ => (0.8, 0.02, 0.31, 0.7, 0.1),
    }
}

pub fn jsonl() -> String {
    let mut out = Vec::new();
    for rate in RATES {
        for (img, _, b, c, p) in IMAGES {
            for sys in ["docker", "nvm", "lass", "hot"] {
                if rate == "1gbit" && sys == "hot" && img == "nginx" {
                    continue;
                }
                let (fd, fs, fc, fp, fm) = factors(sys);
                for (rep, r) in REPS.iter().enumerate() {
                    let rep = rep + 1;
                    out.push(json!({"kind":"deploy","rate":rate,"system":sys,"image":img,
                        "rep":rep,"ok":true,"deploy_ms":b*fd*r,"last_byte_ms":b*fd*r*0.8,
                        "store_after_download_ms":b*fs*r,"sync_ms":10.0,"net_bytes":1000}));
                    let miss = rate == "1gbit" && sys == "hot" && img == "python" && rep == 2;
                    let (rio, rb) = match sys {
                        "hot" if !miss => (0, 0),
                        "hot" => (1, 4096),
                        _ => (200, 20_000_000),
                    };
                    out.push(
                        json!({"kind":"coldstart","rate":rate,"system":sys,"image":img,
                        "rep":rep,"ok":true,"ms":c*fc*r,"disk_read_ios":rio,"disk_read_bytes":rb,
                        "disk_write_ios":3,"disk_write_bytes":12288}),
                    );
                }
                let bytes = (p as f64 * fp) as u64;
                out.push(json!({"kind":"pmem","rate":rate,"system":sys,"image":img,
                    "when":"after_deploy","bytes":bytes,"du_bytes":bytes}));
                if sys == "hot" {
                    let bytes = (p as f64 * fm) as u64;
                    out.push(json!({"kind":"pmem","rate":rate,"system":sys,"image":img,
                        "when":"after_migration","bytes":bytes,"du_bytes":bytes}));
                }
            }
            out.push(
                json!({"kind":"startup_read","rate":rate,"image":img,"hot_files":100,
                "hot_bytes":p/20,"image_bytes":p}),
            );
        }
    }
    out.push(
        json!({"kind":"deploy","rate":"100mbit","system":"docker","image":"node",
        "rep":4,"ok":false,"deploy_ms":null}),
    );
    out.push(
        json!({"kind":"error","rate":"1gbit","system":"hot","image":"nginx",
        "stage":"deploy","message":"registry timed out"}),
    );
    out.push(json!({"kind":"check","name":"caches_dropped","ok":true,"detail":"cold 812 ms vs warm 120 ms"}));
    out.push(json!({"kind":"check","name":"hot_no_disk_reads","ok":false,"detail":"1 read"}));
    out.push(json!({"kind":"future_kind","x":1}));
    let images: Vec<_> = IMAGES
        .iter()
        .map(|(n, c, ..)| {
            json!({"name":n,"category":c,"ready":"exit:hello","layers":3,
            "compressed_bytes":1,"unpacked_bytes":2})
        })
        .collect();
    out.push(json!({"kind":"meta","date":"2026-11-22T10:00:00Z",
        "machine":{"cpu":"Test CPU","nproc":2,"mem_total_kib":24000000,"kernel":"6.18.0"},
        "reps":3,"quick":true,"rates":RATES,"engine":"dockerd 26.1.5 + containerd 1.7.24 + runc 1.1.5",
        "hdd":{"read_iops":150,"read_bps":157286400},"pmem":"tmpfs","run_seconds":1234,
        "started":"2026-11-21T09:00:00Z","runs":2,"cells_done":7,"cells_total":8,
        "images":images,
        "systems":[{"id":"docker","label":"Docker","desc":"overlayfs, all on HDD"},
            {"id":"nvm","label":"NVM-Docker","desc":"all on pmem"},
            {"id":"lass","label":"nvtier LASS","desc":"LASS"},
            {"id":"hot","label":"nvtier LASS+hot","desc":"LASS + hot files"}]}));
    let mut s: String = out.iter().map(|v| format!("{v}\n")).collect();
    s.push('\n');
    s
}

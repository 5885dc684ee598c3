//! A registry behind htpasswd basic auth, for the credential tests.

use super::Bed;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

pub const USER: &str = "puller";
pub const PASSWORD: &str = "s3cret-pw";

/// A docker-registry with htpasswd basic auth on port 5001 of the bed's
/// registry address, over the bed registry's storage. Killed on drop.
pub struct AuthRegistry {
    child: std::process::Child,
    /// `10.77.X.2:5001`
    pub host: String,
}

impl AuthRegistry {
    pub fn start(bed: &Bed, dir: &Path) -> AuthRegistry {
        let ip = bed.registry.rsplit_once(':').expect("host:port").0;
        let host = format!("{ip}:5001");
        let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
        let htpasswd = dir.join("htpasswd");
        fs::write(&htpasswd, format!("{USER}:{hash}\n")).expect("htpasswd");
        let conf = dir.join("auth-registry.yml");
        fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  secret: nvtier-auth-test\nauth:\n  htpasswd:\n    realm: nvtier-test\n    path: {}\n",
                bed.registry_data.display(),
                htpasswd.display()
            ),
        )
        .expect("registry config");
        let log = fs::File::create(dir.join("auth-registry.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("nvt-{}", bed.name)])
            .arg("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let r = AuthRegistry { child, host };
        let url = format!("http://{}/v2/", r.host);
        let t0 = std::time::Instant::now();
        let asks = || {
            Command::new("curl")
                .args([
                    "--noproxy",
                    "*",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args(["--max-time", "2", &url])
                .output()
                .is_ok_and(|o| o.stdout == b"401")
        };
        while !asks() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "the auth registry did not ask for credentials within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        r
    }

    /// `img` (on the bed's registry) as a reference on this one.
    pub fn reference(&self, img: &str) -> String {
        let (_, path) = img.split_once('/').expect("host/path");
        format!("{}/{path}", self.host)
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Docker config.json with `user:password` for `host`.
pub fn docker_json(host: &str, user: &str, password: &str) -> String {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#)
}

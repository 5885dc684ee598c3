//! Static layer classification (N-Docker HBCSA, "static" half).
//!
//! Before any profile exists, nvtier guesses from the image config's history
//! (`created_by`) and from the files a layer adds which layers hold the
//! execution engine or the application. Those are what a cold start reads
//! most, so they are kept on pmem. Base-distro and system-dependency layers
//! are not.
//!
//! # Rule set
//! The rules are tried in this order. The first match wins.
//! 1. **Application, by command.** A language package install (`pip install`,
//!    `npm install`/`ci`, `yarn`, `bundle install`, `gem install`,
//!    `composer install`, `mvn`/`gradle`, `go build`, `cargo build`), or a
//!    `COPY`/`ADD` into an application directory (`/app`, `/srv`,
//!    `/usr/src/app`, `/var/www`, `/home/...`, `/opt/<name>` that is not a
//!    runtime, `.`).
//! 2. **Execution engine, by command.** Installing or unpacking a known
//!    runtime: python, node, java/jdk/jre, ruby, perl (as an explicit
//!    install), php, go, dotnet, erlang/elixir, lua, R, deno/bun.
//! 3. **Base distro.** The bottom layer, or a command that imports a root
//!    filesystem (`ADD file:… in /`, `debootstrap`, a rootfs tarball), or
//!    files that only a distro base holds (`etc/os-release`,
//!    `usr/lib/os-release` together with `bin/sh`).
//! 4. **Execution engine, by files.** It adds interpreter or runtime trees:
//!    `usr/lib/python3*`, `usr/local/lib/python3*`, `usr/bin/python3*`,
//!    `usr/bin/node`, `usr/local/bin/node`, `usr/lib/node_modules`,
//!    `usr/lib/jvm`, `opt/java`, `usr/lib/ruby`, `usr/local/go`, ...
//! 5. **Application, by files.** At least half of the files it adds are
//!    under an application directory (see rule 1).
//! 6. **System dependencies.** A system package manager (`apt-get install`,
//!    `apt install`, `apk add`, `yum`/`dnf`/`microdnf install`, `zypper`,
//!    `dpkg -i`), or files mostly (more than half) under `usr/lib`,
//!    `usr/share`, `lib`, `etc`, `var/lib/dpkg` and the like.
//! 7. **Otherwise application.** An unrecognised layer above the base is
//!    most likely the user's own content.

use serde::{Deserialize, Serialize};

/// What a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerClass {
    BaseDistro,
    SystemDeps,
    ExecutionEngine,
    Application,
}

impl LayerClass {
    /// Whether the static rule keeps this class on pmem.
    pub fn wants_pmem(self) -> bool {
        matches!(self, LayerClass::ExecutionEngine | LayerClass::Application)
    }
}

/// What is known about one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerFacts {
    /// Index in chain order (0 = bottom).
    pub index: usize,
    /// `created_by` of the matching non-empty history entry, if any.
    pub created_by: Option<String>,
    /// Paths the layer adds, relative to the image root (no leading `/`).
    /// May be a sample; an empty list means unknown.
    pub paths: Vec<String>,
}

const RUNTIMES: &[&str] = &[
    "python",
    "python3",
    "pypy",
    "node",
    "nodejs",
    "openjdk",
    "java",
    "jdk",
    "jre",
    "temurin",
    "ruby",
    "php",
    "golang",
    "dotnet",
    "aspnetcore",
    "erlang",
    "elixir",
    "lua",
    "luajit",
    "r-base",
    "deno",
    "bun",
    "perl",
];

const APP_INSTALLERS: &[&str] = &[
    "pip install",
    "pip3 install",
    "pipenv install",
    "poetry install",
    "npm install",
    "npm ci",
    "yarn install",
    "yarn --",
    "pnpm install",
    "bundle install",
    "gem install",
    "composer install",
    "mvn ",
    "gradle ",
    "go build",
    "go install",
    "cargo build",
    "cargo install",
];

const SYS_INSTALLERS: &[&str] = &[
    "apt-get install",
    "apt install",
    "apt-get -y install",
    "apt-get -yq install",
    "apk add",
    "yum install",
    "dnf install",
    "microdnf install",
    "zypper in",
    "zypper install",
    "dpkg -i",
];

const APP_DIRS: &[&str] = &[
    "app/",
    "srv/",
    "usr/src/app/",
    "var/www/",
    "home/",
    "workspace/",
];

const RUNTIME_DIRS: &[&str] = &[
    "usr/lib/python3",
    "usr/local/lib/python3",
    "usr/bin/python3",
    "usr/local/bin/python3",
    "usr/bin/python",
    "usr/bin/node",
    "usr/local/bin/node",
    "usr/lib/node_modules",
    "usr/local/lib/node_modules",
    "usr/share/nodejs",
    "usr/lib/jvm/",
    "opt/java/",
    "usr/lib/ruby/",
    "usr/local/lib/ruby/",
    "usr/bin/ruby",
    "usr/local/go/",
    "usr/lib/go",
    "usr/share/dotnet/",
    "usr/lib/erlang/",
    "usr/lib/php/",
    "usr/bin/php",
    "usr/local/bin/php",
];

const SYS_DIRS: &[&str] = &[
    "usr/lib/",
    "usr/share/",
    "lib/",
    "lib64/",
    "etc/",
    "var/lib/dpkg/",
    "var/lib/apt/",
    "var/cache/",
    "var/log/",
    "usr/bin/",
    "usr/sbin/",
    "bin/",
    "sbin/",
    "usr/libexec/",
];

/// Lower-case, and collapse the `/bin/sh -c #(nop) ` prefixes docker adds.
fn norm(cmd: &str) -> String {
    let c = cmd.to_ascii_lowercase();
    let c = c
        .replace("/bin/sh -c #(nop) ", "")
        .replace("/bin/sh -c ", "");
    c.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn words(c: &str) -> impl Iterator<Item = &str> {
    c.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '.' || ch == '_'))
        .filter(|w| !w.is_empty())
}

/// A package name that names a runtime: `python3`, `python3.11`,
/// `openjdk-17-jre-headless`, `nodejs`, `ruby3.1`...
fn is_runtime_package(w: &str) -> bool {
    RUNTIMES.iter().any(|r| {
        w == *r
            || w.strip_prefix(r).is_some_and(|rest| {
                rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
                    && !rest.contains("-dev")
                    && !rest.contains("-doc")
            })
    })
}

fn installs_runtime(c: &str) -> bool {
    let installs = SYS_INSTALLERS.iter().any(|i| c.contains(i))
        || c.contains("curl ")
        || c.contains("wget ")
        || c.contains("tar ")
        || c.starts_with("copy ")
        || c.starts_with("add ");
    if !installs {
        return false;
    }
    // For package installs, look at the package names only.
    let tail = SYS_INSTALLERS
        .iter()
        .filter_map(|i| c.find(i).map(|p| &c[p + i.len()..]))
        .next()
        .unwrap_or(c);
    words(tail).any(is_runtime_package)
        || RUNTIME_DIRS
            .iter()
            .any(|d| c.contains(&format!("/{}", d.trim_end_matches('/'))))
}

fn copies_app(c: &str) -> bool {
    if !(c.starts_with("copy ") || c.starts_with("add ")) {
        return false;
    }
    if c.contains(" in / ") || c.ends_with(" in /") {
        return false;
    }
    let dest = c.rsplit(' ').next().unwrap_or("");
    let dest = dest.trim_start_matches('/');
    dest == "."
        || dest == "./"
        || APP_DIRS.iter().any(|d| {
            let d = d.trim_end_matches('/');
            dest == d || dest.starts_with(&format!("{d}/"))
        })
        || (dest.starts_with("opt/") && !RUNTIME_DIRS.iter().any(|r| dest.starts_with(r)))
}

fn imports_rootfs(c: &str) -> bool {
    (c.starts_with("add file:") && (c.ends_with(" in /") || c.contains(" in / ")))
        || c.contains("debootstrap")
        || c.contains("rootfs.tar")
}

fn paths_under<'a>(paths: &'a [String], dirs: &'a [&str]) -> impl Iterator<Item = &'a String> + 'a {
    paths
        .iter()
        .filter(move |p| dirs.iter().any(|d| p.starts_with(d)))
}

/// Classify one layer. See the module documentation for the rules.
pub fn classify(l: &LayerFacts) -> LayerClass {
    let c = l.created_by.as_deref().map(norm).unwrap_or_default();
    // 1. Application by command.
    if APP_INSTALLERS.iter().any(|i| c.contains(i)) || copies_app(&c) {
        return LayerClass::Application;
    }
    // 2. Engine by command.
    if installs_runtime(&c) {
        return LayerClass::ExecutionEngine;
    }
    // 3. Base distro.
    let has = |p: &str| l.paths.iter().any(|x| x == p);
    if l.index == 0
        || imports_rootfs(&c)
        || has("etc/os-release")
        || (has("usr/lib/os-release") && (has("bin/sh") || has("usr/bin/sh")))
    {
        return LayerClass::BaseDistro;
    }
    // 4. Engine by files.
    if paths_under(&l.paths, RUNTIME_DIRS).next().is_some() {
        return LayerClass::ExecutionEngine;
    }
    // 5. Application by files.
    let app_files = paths_under(&l.paths, APP_DIRS).count()
        + l.paths
            .iter()
            .filter(|p| p.starts_with("opt/") && !RUNTIME_DIRS.iter().any(|r| p.starts_with(r)))
            .count();
    if app_files > 0 && app_files * 2 >= l.paths.len() {
        return LayerClass::Application;
    }
    // 6. System dependencies.
    if SYS_INSTALLERS.iter().any(|i| c.contains(i)) {
        return LayerClass::SystemDeps;
    }
    if !l.paths.is_empty() && paths_under(&l.paths, SYS_DIRS).count() * 2 > l.paths.len() {
        return LayerClass::SystemDeps;
    }
    // 7. Otherwise application.
    LayerClass::Application
}

/// Classify a layer from its command alone (pull time, before the layer's
/// files are known): rules 1, 2, 3 and 6 by command or position. `None`
/// when the command says nothing (rule 7 would guess "application"; at pull
/// time nvtier does not act on a guess).
pub fn classify_by_command(index: usize, created_by: Option<&str>) -> Option<LayerClass> {
    let c = created_by.map(norm).unwrap_or_default();
    if APP_INSTALLERS.iter().any(|i| c.contains(i)) || copies_app(&c) {
        return Some(LayerClass::Application);
    }
    if installs_runtime(&c) {
        return Some(LayerClass::ExecutionEngine);
    }
    if index == 0 || imports_rootfs(&c) {
        return Some(LayerClass::BaseDistro);
    }
    if SYS_INSTALLERS.iter().any(|i| c.contains(i)) {
        return Some(LayerClass::SystemDeps);
    }
    None
}

impl std::fmt::Display for LayerClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerClass::BaseDistro => "base_distro",
            LayerClass::SystemDeps => "system_deps",
            LayerClass::ExecutionEngine => "execution_engine",
            LayerClass::Application => "application",
        })
    }
}

/// Align the image config's history with its layers: history entries with
/// `empty_layer: true` have no layer. Returns one `created_by` per layer
/// (`None` when the history is shorter than the layer list).
pub fn align_history(history: &[(Option<String>, bool)], layers: usize) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = history
        .iter()
        .filter(|(_, empty)| !*empty)
        .map(|(c, _)| c.clone())
        .take(layers)
        .collect();
    out.resize(layers, None);
    out
}

/// Initial placement before any profile exists: on top of what LASS put on
/// pmem, promote execution-engine and application layers, top-most first,
/// while they fit in the free budget. Returns the layers to promote.
pub fn initial_promotions(
    classes: &[LayerClass],
    on_pmem: &[bool],
    bytes: &[u64],
    mut pmem_free: u64,
) -> Vec<usize> {
    let mut out = Vec::new();
    for i in (0..classes.len()).rev() {
        if on_pmem.get(i).copied().unwrap_or(false) || !classes[i].wants_pmem() {
            continue;
        }
        let b = bytes.get(i).copied().unwrap_or(0);
        if b <= pmem_free {
            pmem_free -= b;
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use LayerClass::*;

    #[test]
    fn by_command_alone_never_guesses() {
        assert_eq!(
            classify_by_command(1, Some("RUN apt-get install -y python3")),
            Some(ExecutionEngine)
        );
        assert_eq!(
            classify_by_command(2, Some("COPY main.py /app/main.py")),
            Some(Application)
        );
        assert_eq!(
            classify_by_command(1, Some("/bin/sh -c pip install flask")),
            Some(Application)
        );
        assert_eq!(
            classify_by_command(1, Some("RUN apt-get install -y nginx-light")),
            Some(SystemDeps)
        );
        assert_eq!(classify_by_command(0, None), Some(BaseDistro));
        assert_eq!(
            classify_by_command(3, Some("RUN nvtier-testbed fill /data/x 1M")),
            None
        );
        assert_eq!(classify_by_command(3, None), None);
        // Agrees with the full rule set wherever it answers.
        for (i, c) in [
            (1, "RUN apt-get install -y ruby"),
            (2, "COPY . /srv"),
            (0, "ADD file:abc in /"),
            (1, "RUN apk add curl"),
        ] {
            assert_eq!(classify_by_command(i, Some(c)), Some(by_cmd(i, c)), "{c}");
        }
    }

    fn by_cmd(index: usize, cmd: &str) -> LayerClass {
        classify(&LayerFacts {
            index,
            created_by: Some(cmd.to_string()),
            paths: vec![],
        })
    }

    fn by_paths(index: usize, paths: &[&str]) -> LayerClass {
        classify(&LayerFacts {
            index,
            created_by: None,
            paths: paths.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn docker_hub_python_image_history() {
        // The shape of the official python:3.x-slim history.
        let h = [
            "/bin/sh -c #(nop) ADD file:5d6b639e8b6bcc01149b2486502a6fdd4d80d3b7ff5a0e5a3c0b5a4b1d9e6f2a in / ",
            "/bin/sh -c set -eux; apt-get update; apt-get install -y --no-install-recommends ca-certificates netbase tzdata; rm -rf /var/lib/apt/lists/*",
            "/bin/sh -c set -eux; savedAptMark=\"$(apt-mark showmanual)\"; wget -O python.tar.xz \"https://www.python.org/ftp/python/${PYTHON_VERSION%%[a-z]*}/Python-$PYTHON_VERSION.tar.xz\"; tar --extract --directory /usr/src/python --file python.tar.xz; make install; python3 --version",
            "COPY requirements.txt /app/ # buildkit",
            "RUN /bin/sh -c pip install --no-cache-dir -r /app/requirements.txt # buildkit",
            "COPY . . # buildkit",
        ];
        let got: Vec<_> = h.iter().enumerate().map(|(i, c)| by_cmd(i, c)).collect();
        assert_eq!(
            got,
            vec![
                BaseDistro,
                SystemDeps,
                ExecutionEngine,
                Application,
                Application,
                Application
            ]
        );
    }

    #[test]
    fn runtimes_by_package_name() {
        for cmd in [
            "RUN apt-get update && apt-get install -y python3 python3-pip",
            "RUN apt-get install -y openjdk-17-jre-headless",
            "RUN apk add --no-cache nodejs npm",
            "RUN apt-get install -y ruby3.1",
            "RUN yum install -y php",
            "RUN apt-get -y install golang-1.21",
        ] {
            assert_eq!(by_cmd(1, cmd), ExecutionEngine, "{cmd}");
        }
        // -dev headers and unrelated packages are system dependencies.
        for cmd in [
            "RUN apt-get install -y libssl-dev zlib1g",
            "RUN apt-get install -y python3-dev-tools-doc-only-not-runtime-xyz libpq5",
            "RUN apk add --no-cache ca-certificates tzdata",
        ] {
            assert_ne!(by_cmd(1, cmd), ExecutionEngine, "{cmd}");
        }
        assert_eq!(
            by_cmd(1, "RUN apk add --no-cache ca-certificates tzdata"),
            SystemDeps
        );
    }

    #[test]
    fn runtime_by_download() {
        assert_eq!(
            by_cmd(2, "RUN curl -fsSL https://nodejs.org/dist/v20/node-v20-linux-x64.tar.xz | tar -xJ -C /usr/local --strip-components=1"),
            ExecutionEngine
        );
        assert_eq!(
            by_cmd(2, "COPY --from=build /usr/lib/jvm /usr/lib/jvm"),
            ExecutionEngine
        );
    }

    #[test]
    fn applications() {
        for cmd in [
            "COPY . /app",
            "COPY app.py /srv/app.py",
            "ADD site.tar /var/www/html",
            "COPY server.js /usr/src/app/",
            "RUN npm ci --only=production",
            "RUN bundle install",
            "RUN go build -o /bin/server ./cmd/server",
            "COPY target/app.jar /opt/myapp/app.jar",
            "COPY . .",
        ] {
            assert_eq!(by_cmd(3, cmd), Application, "{cmd}");
        }
    }

    #[test]
    fn base_distro() {
        assert_eq!(by_cmd(0, "anything at all"), BaseDistro);
        assert_eq!(by_paths(0, &[]), BaseDistro);
        assert_eq!(
            by_cmd(1, "/bin/sh -c #(nop) ADD file:abc in / "),
            BaseDistro
        );
        assert_eq!(by_cmd(1, "RUN debootstrap bookworm /rootfs"), BaseDistro);
        assert_eq!(
            by_paths(1, &["etc/os-release", "bin/sh", "usr/lib/x"]),
            BaseDistro
        );
    }

    #[test]
    fn by_files_when_history_is_missing() {
        assert_eq!(
            by_paths(1, &["usr/lib/python3.11/os.py", "usr/bin/python3.11"]),
            ExecutionEngine
        );
        assert_eq!(
            by_paths(2, &["usr/lib/jvm/java-17/bin/java"]),
            ExecutionEngine
        );
        assert_eq!(
            by_paths(3, &["app/main.py", "app/util.py", "etc/app.conf"]),
            Application
        );
        assert_eq!(
            by_paths(
                1,
                &[
                    "usr/lib/x86_64-linux-gnu/libssl.so.3",
                    "etc/ssl/openssl.cnf"
                ]
            ),
            SystemDeps
        );
        // Mostly system files with one stray app file: system deps.
        assert_eq!(
            by_paths(
                1,
                &[
                    "usr/lib/a.so",
                    "usr/lib/b.so",
                    "usr/share/doc/x",
                    "app/readme"
                ]
            ),
            SystemDeps
        );
        // Nothing known about an upper layer: assume the user's content.
        assert_eq!(by_paths(4, &[]), Application);
        assert_eq!(by_paths(4, &["data/layer4.bin"]), Application);
    }

    #[test]
    fn command_beats_files() {
        // An app install that also drops files under usr/lib stays an app.
        let l = LayerFacts {
            index: 2,
            created_by: Some("RUN pip install flask".into()),
            paths: vec!["usr/local/lib/python3.11/site-packages/flask/app.py".into()],
        };
        assert_eq!(classify(&l), Application);
    }

    #[test]
    fn history_alignment_skips_empty_layers() {
        let h = vec![
            (Some("ADD file:x in /".to_string()), false),
            (Some("ENV A=b".to_string()), true),
            (Some("RUN apt-get install -y python3".to_string()), false),
            (Some("CMD [\"python3\"]".to_string()), true),
        ];
        let a = align_history(&h, 3);
        assert_eq!(
            a,
            vec![
                Some("ADD file:x in /".to_string()),
                Some("RUN apt-get install -y python3".to_string()),
                None
            ]
        );
        assert_eq!(align_history(&h, 1).len(), 1);
    }

    #[test]
    fn promotions_follow_class_and_budget() {
        let classes = [
            BaseDistro,
            SystemDeps,
            ExecutionEngine,
            Application,
            Application,
        ];
        let on_pmem = [false, false, false, false, true];
        let bytes = [50, 40, 30, 20, 10];
        // Everything fits: engine and app layers not yet on pmem.
        assert_eq!(
            initial_promotions(&classes, &on_pmem, &bytes, 1000),
            vec![3, 2]
        );
        // Budget for the app layer only (top-most first).
        assert_eq!(initial_promotions(&classes, &on_pmem, &bytes, 25), vec![3]);
        // A layer that does not fit is skipped, a smaller lower one may fit.
        let bytes = [50, 40, 5, 20, 10];
        assert_eq!(initial_promotions(&classes, &on_pmem, &bytes, 10), vec![2]);
        assert!(initial_promotions(&classes, &on_pmem, &bytes, 0).is_empty());
        assert!(initial_promotions(&[], &[], &[], 100).is_empty());
    }

    #[test]
    fn norm_collapses_shell_prefix() {
        assert_eq!(norm("/bin/sh -c #(nop)  COPY  a   /app"), "copy a /app");
        assert_eq!(norm("/bin/sh -c apt-get install x"), "apt-get install x");
    }
}

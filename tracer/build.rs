//! Builds the BPF program and its skeleton. `vmlinux.h` comes from the
//! running kernel's BTF through bpftool (Debian package `bpftool`, installed
//! by `testbed/install-deps.sh`), so the program is CO-RE against the exact
//! kernel types.

use libbpf_cargo::SkeletonBuilder;
use std::env;
use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "../bpf/nvtier_trace.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let btf = env::var("NVTIER_VMLINUX_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    let vmlinux = out.join("vmlinux.h");
    let dump = Command::new("bpftool")
        .args(["btf", "dump", "file", &btf, "format", "c"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run bpftool ({e}): install it with `bash testbed/install-deps.sh` (Debian package bpftool)")
        });
    if !dump.status.success() {
        panic!(
            "bpftool btf dump {btf} failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
    }
    std::fs::write(&vmlinux, &dump.stdout).expect("write vmlinux.h");
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args([
            std::ffi::OsString::from("-I"),
            out.clone().into_os_string(),
            "-Wall".into(),
            "-O2".into(),
        ])
        .build_and_generate(out.join("nvtier_trace.skel.rs"))
        .expect("build the BPF program (needs clang and libbpf headers)");
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-env-changed=NVTIER_VMLINUX_BTF");
}

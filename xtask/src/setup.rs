//! Idempotent provisioning. Each step checks first and says what it found or did.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::sh;

/// bpf-linker older than this fails BTF loading when aya-log is used (shared/TOOLCHAIN.md).
const BPF_LINKER_MIN: (u32, u32) = (0, 11);
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the build, run and tests need.
const PACKAGES: &[&str] = &[
    "docker.io",
    "busybox-static",
    "iperf3",
    "bpftool",
    "iproute2",
    "prometheus",
    "curl",
];

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    packages()?;
    mounts()?;
    Ok(())
}

fn step(what: &str, state: &str) {
    eprintln!("setup: {what}: {state}");
}

fn rust_src() -> anyhow::Result<()> {
    let installed = sh::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("nightly rust-src", "present");
        return Ok(());
    }
    step("nightly rust-src", "installing");
    sh::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = sh::output(Command::new("bpf-linker").arg("--version"));
    if let Some(v) = version.as_deref().and_then(parse_version)
        && v >= BPF_LINKER_MIN
    {
        step("bpf-linker", &format!("{}.{} present", v.0, v.1));
        return Ok(());
    }
    step("bpf-linker", "building against nightly's LLVM (about 75 s)");
    // No system LLVM matches nightly's, so link against the one rustup ships: a lasting
    // prefix whose lib/ points at it (bpf-linker keeps it as its RUNPATH).
    let sysroot = sh::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly is missing: install the nightly toolchain")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let prefix = llvm_prefix();
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    }
    sh::run(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

fn llvm_prefix() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/dockops/llvm")
}

/// `bpf-linker 0.13.0` → (0, 13).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().nth(1)?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !sh::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("packages", &format!("{} present", PACKAGES.join(", ")));
        return Ok(());
    }
    let debian = fs::read_to_string("/etc/os-release").is_ok_and(|s| {
        s.lines()
            .any(|l| l == "ID=debian" || l == "ID=ubuntu" || l.starts_with("ID_LIKE=debian"))
    });
    if !debian || !sh::is_root() {
        bail!(
            "missing packages: {}. Install them with your package manager as root \
             (Debian/Ubuntu: apt-get install {}) and rerun.",
            missing.join(", "),
            missing.join(" ")
        );
    }
    step("packages", &format!("installing {}", missing.join(", ")));
    sh::run(Command::new("apt-get").args(["update", "-qq"]))?;
    sh::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn mounts() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    for (fstype, target) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
        if mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(target)
                && l.split_whitespace().nth(2) == Some(fstype)
        }) {
            step(target, "mounted");
            continue;
        }
        if !sh::is_root() {
            step(
                target,
                "not mounted (dockops-bpf mounts it when run as root)",
            );
            continue;
        }
        step(target, &format!("mounting {fstype}"));
        fs::create_dir_all(target)?;
        sh::run(Command::new("mount").args(["-t", fstype, fstype, target]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_bpf_linker_version() {
        assert_eq!(super::parse_version("bpf-linker 0.13.0"), Some((0, 13)));
        assert_eq!(super::parse_version("bpf-linker 1.2.3-rc1"), Some((1, 2)));
        assert_eq!(super::parse_version("garbage"), None);
    }
}

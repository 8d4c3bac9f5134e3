//! Idempotent provisioning. Each step checks first and says what it found or did.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{sh, toolchain};

/// Debian packages the build, run and tests need.
const PACKAGES: &[&str] = &[
    "docker.io",
    "busybox-static",
    "btrfs-progs",
    "iperf3",
    "bpftool",
    "iproute2",
    "prometheus",
    "curl",
    "python3-pip",
    "wrk",
];

/// The Kubernetes manifest validator the deploy tests run (from `PyPI`, with the API schemas
/// bundled), pinned.
const KUBERNETES_VALIDATE: &str = "1.37.0";

/// Where it is installed (`pip install --target`): `PYTHONPATH` for `python3 -m
/// kubernetes_validate`.
pub fn kubernetes_validate_dir() -> PathBuf {
    toolchain::home()
        .join(".local/share/dockops")
        .join(format!("kubernetes-validate-{KUBERNETES_VALIDATE}"))
}

pub fn run() -> anyhow::Result<()> {
    nightly()?;
    bpf_linker()?;
    ensure_packages(PACKAGES)?;
    kubernetes_validate()?;
    nginx()?;
    mounts()?;
    Ok(())
}

fn kubernetes_validate() -> anyhow::Result<()> {
    let dir = kubernetes_validate_dir();
    if dir.join("kubernetes_validate").is_dir() {
        step("kubernetes-validate", &format!("{} present", dir.display()));
        return Ok(());
    }
    step("kubernetes-validate", "installing from PyPI (about 5 s)");
    let partial = dir.with_file_name(format!("kubernetes-validate-{KUBERNETES_VALIDATE}.partial"));
    let _ = fs::remove_dir_all(&partial);
    sh::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&partial)
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")),
    )
    .context("pip install kubernetes-validate")?;
    fs::rename(&partial, &dir)?;
    Ok(())
}

/// Where Debian's nginx is unpacked for the test image (`usr/sbin/nginx` below it): the
/// package is only downloaded, never installed, so no nginx service starts on the host.
pub fn nginx_dir() -> PathBuf {
    toolchain::home().join(".local/share/dockops/nginx")
}

fn nginx() -> anyhow::Result<()> {
    let dir = nginx_dir();
    if dir.join("usr/sbin/nginx").is_file() {
        step("nginx", &format!("{} present", dir.display()));
        return Ok(());
    }
    step(
        "nginx",
        "downloading Debian's package (unpacked, not installed)",
    );
    let download = dir.with_file_name("nginx.download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    let fetch = || {
        sh::ok(
            Command::new("apt-get")
                .args(["download", "-qq", "nginx"])
                .current_dir(&download),
        )
    };
    // Stale package lists on a machine that had every package already: refresh once.
    let fetched = fetch() || (sh::ok(Command::new("apt-get").args(["update", "-qq"])) && fetch());
    if !fetched {
        bail!("apt-get download nginx failed: the test image serves HTTP with Debian's nginx");
    }
    let deb = fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download nginx left no .deb")?;
    let partial = dir.with_file_name("nginx.partial");
    let _ = fs::remove_dir_all(&partial);
    sh::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)?;
    let _ = fs::remove_dir_all(&download);
    Ok(())
}

fn step(what: &str, state: &str) {
    eprintln!("setup: {what}: {state}");
}

/// The pinned nightly with `rust-src` (for `-Z build-std`), installed beside any other.
fn nightly() -> anyhow::Result<()> {
    let installed = sh::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain::NIGHTLY,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step(toolchain::NIGHTLY, "present with rust-src");
        return Ok(());
    }
    step(toolchain::NIGHTLY, "installing (about 15 s)");
    sh::run(Command::new("rustup").args([
        "toolchain",
        "install",
        toolchain::NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// The pinned bpf-linker, built against the LLVM the pinned nightly ships, in a directory of
/// its own (a bpf-linker elsewhere on PATH is neither used nor replaced).
fn bpf_linker() -> anyhow::Result<()> {
    let root = toolchain::linker_root(&toolchain::home());
    let linker = root.join("bin/bpf-linker");
    let version = sh::output(Command::new(&linker).arg("--version")).unwrap_or_default();
    if version.split_whitespace().nth(1) == Some(toolchain::BPF_LINKER) {
        step("bpf-linker", &format!("{} present", linker.display()));
        return Ok(());
    }
    step(
        "bpf-linker",
        &format!(
            "building {} against LLVM {} (about 75 s)",
            toolchain::BPF_LINKER,
            toolchain::LLVM_MAJOR
        ),
    );
    // No system LLVM matches nightly's, so link against the one rustup ships: a lasting
    // prefix whose lib/ points at it (bpf-linker keeps it as its RUNPATH).
    let sysroot = sh::output(Command::new("rustc").args([
        &format!("+{}", toolchain::NIGHTLY),
        "--print",
        "sysroot",
    ]))
    .with_context(|| format!("rustc +{} is missing", toolchain::NIGHTLY))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = llvm_major(&llvm);
    if major != Some(toolchain::LLVM_MAJOR) {
        bail!(
            "{} ships {llvm}, but dockops-ebpf/toolchain.rs pins LLVM {}: set LLVM_MAJOR to \
             the nightly's LLVM (see docs/OPERATIONS.md, \"Moving the eBPF toolchain\")",
            toolchain::NIGHTLY,
            toolchain::LLVM_MAJOR
        );
    }
    let prefix = root.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    }
    sh::run(
        Command::new("cargo")
            .arg(format!("+{}", toolchain::NIGHTLY))
            .args([
                "install",
                "--locked",
                "--force",
                &format!("bpf-linker@{}", toolchain::BPF_LINKER),
                "--no-default-features",
                "--features",
                &format!("llvm-{}", toolchain::LLVM_MAJOR),
                "--root",
            ])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )
}

/// `libLLVM.so.23.1-rust-1.101.0-nightly` → 23.
fn llvm_major(file: &str) -> Option<u32> {
    file.strip_prefix("libLLVM.so.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Installs those of `packages` that are missing (Debian/Ubuntu as root; otherwise says what
/// to install).
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !sh::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("packages", &format!("{} present", packages.join(", ")));
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
    fn reads_llvm_major_from_the_library_name() {
        assert_eq!(
            super::llvm_major("libLLVM.so.23.1-rust-1.101.0-nightly"),
            Some(23)
        );
        assert_eq!(
            super::llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(
            super::llvm_major("libLLVM-23-rust-1.101.0-nightly.so"),
            None
        );
    }
}

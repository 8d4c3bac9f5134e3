//! `--storage-size` on a running container, against the private engine `cargo xtask test`
//! starts with its data root on a loop-mounted btrfs (the btrfs driver, a qgroup): the limit
//! bites, raising it lets the write finish, and `stats` shows usage and limit. (overlay2 with
//! project quotas cannot be tested on this project's kernel: ext4 with the quota feature
//! does not mount without `CONFIG_QFMT_V2`.)

use std::process::{Command, Output, Stdio};

use dockops_integration::dockops_cmd;
use serde_json::Value;

/// The engine `var` names.
fn host(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is unset: run these tests through `cargo xtask test`"))
}

fn docker(host: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .env("DOCKER_HOST", host)
        .args(args)
        .output()
        .expect("docker")
}

/// `dockops-bpf ARGS` against the engine at `host`.
fn dockops(host: &str, args: &[&str]) -> Output {
    dockops_cmd()
        .env("DOCKER_HOST", host)
        .args(args)
        .output()
        .expect("dockops-bpf")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A container on a private engine (host, name), removed on drop.
struct Guard(String, String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", &self.0)
            .args(["rm", "-f", &self.1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn stats(host: &str, name: &str) -> Value {
    let line = ok(
        &dockops(host, &["stats", "--sample", "0", "--format", "json", name]),
        "stats",
    );
    serde_json::from_str(line.trim()).expect("stats JSON")
}

/// 80 MiB do not fit under a 50 MiB limit, and do once it is raised to 200 MiB, live.
fn limit_bites_and_can_be_raised(host: &str) {
    let name = "dockops-it-storage";
    let _ = docker(host, &["rm", "-f", name]);
    let image = std::env::var("DOCKOPS_TEST_IMAGE").expect("DOCKOPS_TEST_IMAGE");
    ok(
        &docker(
            host,
            &[
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                name,
                &image,
                "sleep",
                "600",
            ],
        ),
        "docker run",
    );
    let _guard = Guard(host.to_owned(), name.to_owned());
    let out = ok(
        &dockops(host, &["limit", name, "--storage-size", "50m"]),
        "limit",
    );
    assert!(out.contains("storage-size 50M"), "{out}");
    let s = stats(host, name);
    assert_eq!(s["limits"]["storage_bytes"], 50 << 20);
    let used = s["storage"]["usage_bytes"].as_u64().expect("usage");
    assert!(used < 50 << 20, "usage {used}");
    let write = "dd if=/dev/zero of=/big bs=1M count=80 && sync";
    let out = docker(host, &["exec", name, "sh", "-c", write]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "80 MiB went into a 50 MiB layer");
    assert!(
        stderr.contains("quota exceeded") || stderr.contains("No space left"),
        "{stderr}"
    );
    ok(
        &dockops(host, &["limit", name, "--storage-size", "200m"]),
        "raise",
    );
    ok(
        &docker(
            host,
            &["exec", name, "sh", "-c", &format!("rm -f /big; {write}")],
        ),
        "80 MiB under 200 MiB",
    );
    let s = stats(host, name);
    assert_eq!(s["limits"]["storage_bytes"], 200 << 20);
    let used = s["storage"]["usage_bytes"].as_u64().expect("usage");
    assert!(used >= 80 << 20, "usage {used} after writing 80 MiB");
    ok(
        &dockops(host, &["unlimit", name, "--storage-size"]),
        "unlimit",
    );
    assert_eq!(stats(host, name)["limits"]["storage_bytes"], Value::Null);
}

#[test]
fn storage_size_on_btrfs_bites_and_can_be_raised_live() {
    limit_bites_and_can_be_raised(&host("DOCKOPS_BTRFS_HOST"));
}

#[test]
fn storage_size_elsewhere_names_the_driver() {
    // The main test engine uses overlay2 on a filesystem without project quotas.
    let c = dockops_integration::Container::start("storage-overlay", "sleep 600");
    let out = dockops_integration::dockops(&["limit", &c.name, "--storage-size", "50m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("overlay2") && stderr.contains("btrfs"),
        "{stderr}"
    );
}

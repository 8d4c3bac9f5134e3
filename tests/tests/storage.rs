//! `--storage-size` on a running container, against the private engine whose data root is a
//! loop-mounted btrfs (`cargo xtask test` starts it): the limit bites, raising it lets the
//! write finish, and `stats` shows usage and limit.

use std::process::{Command, Output, Stdio};

use dockops_integration::dockops_cmd;
use serde_json::Value;

fn host() -> String {
    std::env::var("DOCKOPS_BTRFS_HOST")
        .expect("DOCKOPS_BTRFS_HOST is unset: run these tests through `cargo xtask test`")
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .env("DOCKER_HOST", host())
        .args(args)
        .output()
        .expect("docker")
}

/// `dockops-bpf ARGS` against the btrfs engine.
fn dockops(args: &[&str]) -> Output {
    dockops_cmd()
        .env("DOCKER_HOST", host())
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

/// A container on the btrfs engine, removed on drop.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", host())
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn stats(name: &str) -> Value {
    let line = ok(
        &dockops(&["stats", "--sample", "0", "--format", "json", name]),
        "stats",
    );
    serde_json::from_str(line.trim()).expect("stats JSON")
}

#[test]
fn storage_size_bites_and_can_be_raised_live() {
    let name = "dockops-it-storage";
    let _ = docker(&["rm", "-f", name]);
    let image = std::env::var("DOCKOPS_TEST_IMAGE").expect("DOCKOPS_TEST_IMAGE");
    ok(
        &docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            &image,
            "sleep",
            "600",
        ]),
        "docker run",
    );
    let _guard = Guard(name.to_owned());
    let out = ok(&dockops(&["limit", name, "--storage-size", "50m"]), "limit");
    assert!(out.contains("storage-size 50M"), "{out}");
    let s = stats(name);
    assert_eq!(s["limits"]["storage_bytes"], 50 << 20);
    let used = s["storage"]["usage_bytes"].as_u64().expect("usage");
    assert!(used > 0 && used < 50 << 20, "usage {used}");
    let write = "dd if=/dev/zero of=/big bs=1M count=80 && sync";
    let out = docker(&["exec", name, "sh", "-c", write]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "80 MiB went into a 50 MiB layer");
    assert!(
        stderr.contains("quota exceeded") || stderr.contains("No space left"),
        "{stderr}"
    );
    ok(
        &dockops(&["limit", name, "--storage-size", "200m"]),
        "raise",
    );
    ok(
        &docker(&["exec", name, "sh", "-c", &format!("rm -f /big; {write}")]),
        "80 MiB under 200 MiB",
    );
    let s = stats(name);
    assert_eq!(s["limits"]["storage_bytes"], 200 << 20);
    let used = s["storage"]["usage_bytes"].as_u64().expect("usage");
    assert!(used >= 80 << 20, "usage {used} after writing 80 MiB");
    ok(&dockops(&["unlimit", name, "--storage-size"]), "unlimit");
    assert_eq!(stats(name)["limits"]["storage_bytes"], Value::Null);
}

#[test]
fn storage_size_elsewhere_names_the_driver() {
    // The main test engine uses overlay2.
    let c = dockops_integration::Container::start("storage-overlay", "sleep 600");
    let out = dockops_integration::dockops(&["limit", &c.name, "--storage-size", "50m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("overlay2") && stderr.contains("btrfs"),
        "{stderr}"
    );
}

//! Helpers for the privileged integration tests: run `dockops-bpf` and `docker` against the
//! engine `cargo xtask test` provides, with guards that remove what a test created even when
//! it panics. Tests panic on failure rather than return errors.

#![expect(
    clippy::missing_panics_doc,
    reason = "test helpers fail tests by panicking, by design"
)]

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const PINS: &str = "/sys/fs/bpf/dockops";

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is unset: run these tests through `cargo xtask test`"))
}

/// `dockops-bpf` with the test engine.
pub fn dockops_cmd() -> Command {
    let mut cmd = Command::new(env("DOCKOPS_BIN"));
    cmd.env("DOCKER_HOST", env("DOCKER_HOST"));
    cmd
}

/// `dockops-bpf` built with the eBPF object `variant` (`variant-code`...), with the test
/// engine: `cargo xtask test` builds them for the upgrade tests.
pub fn dockops_variant_cmd(variant: &str) -> Command {
    let var = format!("DOCKOPS_BIN_{}", variant.to_uppercase().replace('-', "_"));
    let mut cmd = Command::new(env(&var));
    cmd.env("DOCKER_HOST", env("DOCKER_HOST"));
    cmd
}

/// Runs `dockops-bpf ARGS`, returns its output whatever the exit status.
pub fn dockops(args: &[&str]) -> Output {
    dockops_cmd()
        .args(args)
        .output()
        .expect("running dockops-bpf")
}

/// Runs `dockops-bpf ARGS` and panics unless it succeeds; returns stdout.
pub fn dockops_ok(args: &[&str]) -> String {
    let out = dockops(args);
    assert!(
        out.status.success(),
        "dockops-bpf {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `stats --format json`, keyed by container name.
pub fn stats_json() -> HashMap<String, Value> {
    dockops_ok(&["stats", "--format", "json"])
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
            (v["name"].as_str().expect("name").to_owned(), v)
        })
        .collect()
}

/// Runs `docker ARGS` against the test engine; panics unless it succeeds; returns stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .env("DOCKER_HOST", env("DOCKER_HOST"))
        .args(args)
        .output()
        .expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A test container, removed (with `docker rm -f`) on drop.
pub struct Container {
    pub name: String,
    pub id: String,
}

/// A Docker network with IPv6, removed on drop (after the containers on it: declare it
/// first).
pub struct Ipv6Network(pub &'static str);

impl Ipv6Network {
    /// Creates it (replacing a leftover of an aborted run) with the IPv6 `subnet`.
    pub fn create(name: &'static str, subnet: &str) -> Self {
        Self::remove(name);
        docker(&["network", "create", "--ipv6", "--subnet", subnet, name]);
        Self(name)
    }

    fn remove(name: &str) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", env("DOCKER_HOST"))
            .args(["network", "rm", name])
            .output();
    }
}

impl Drop for Ipv6Network {
    fn drop(&mut self) {
        Self::remove(self.0);
    }
}

impl Container {
    /// Starts `sh -c script` in the busybox test image, named `dockops-it-<name>`.
    pub fn start(name: &str, script: &str) -> Self {
        Self::start_with(name, &[], script)
    }

    /// As [`Self::start`], with extra `docker run` options (limits, shm size...).
    pub fn start_with(name: &str, options: &[&str], script: &str) -> Self {
        let name = format!("dockops-it-{name}");
        // A leftover from an aborted run would make `docker run` fail on the name.
        let _ = Command::new("docker")
            .env("DOCKER_HOST", env("DOCKER_HOST"))
            .args(["rm", "-f", &name])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status();
        let image = env("DOCKOPS_TEST_IMAGE");
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(options);
        args.extend_from_slice(&[&image, "sh", "-c", script]);
        let id = docker(&args);
        Self { name, id }
    }

    pub fn ip(&self) -> String {
        docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &self.id])
    }

    /// Its global IPv6 address (on an [`Ipv6Network`]).
    pub fn ipv6(&self) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
            &self.id,
        ])
    }

    pub fn exec(&self, script: &str) -> String {
        docker(&["exec", &self.id, "sh", "-c", script])
    }

    /// Whether `sh -c script` succeeds in the container (for polling).
    pub fn exec_ok(&self, script: &str) -> bool {
        Command::new("docker")
            .env("DOCKER_HOST", env("DOCKER_HOST"))
            .args(["exec", &self.id, "sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The host-side veth (ifindex, name), found independently of dockops: the container's
    /// own sysfs gives eth0's peer index, the host's sysfs its name.
    pub fn host_veth(&self) -> (u32, String) {
        let ifindex: u32 = self
            .exec("cat /sys/class/net/eth0/iflink")
            .parse()
            .expect("iflink");
        for entry in fs::read_dir("/sys/class/net").expect("/sys/class/net") {
            let path = entry.expect("entry").path();
            if fs::read_to_string(path.join("ifindex"))
                .is_ok_and(|s| s.trim() == ifindex.to_string())
            {
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                return (ifindex, name);
            }
        }
        panic!("no host interface with ifindex {ifindex}");
    }

    /// Directory of this container's attachment pins.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PINS).join("links").join(&self.id)
    }

    /// Removes the container now (the guard then has nothing left to do).
    pub fn remove(&self) {
        docker(&["rm", "-f", &self.id]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", env("DOCKER_HOST"))
            .args(["rm", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A background `dockops-bpf` (e.g. `watch`), killed on drop; stdout goes to a file.
pub struct Background {
    child: Child,
    pub stdout: PathBuf,
}

impl Background {
    pub fn start(args: &[&str]) -> Self {
        let stdout = std::env::temp_dir().join(format!(
            "dockops-it-{}-{}.out",
            std::process::id(),
            args.join("_").replace('/', "_")
        ));
        let file = fs::File::create(&stdout).expect("stdout file");
        let child = dockops_cmd()
            .args(args)
            .stdout(file)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dockops-bpf");
        Self { child, stdout }
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once it has exited on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_for(
            Duration::from_secs(10),
            "dockops-bpf to exit on SIGTERM",
            || self.child.try_wait().expect("try_wait").is_some(),
        );
        self.child.wait().expect("wait")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.stdout);
    }
}

/// Polls `check` until it holds, panicking with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Names of the files in `dir`, sorted; empty if it does not exist.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// BPF link ids of a container's pinned tcx links.
pub fn link_ids(container: &Container) -> Vec<u64> {
    let mut ids: Vec<u64> = list(&container.pin_dir())
        .iter()
        .map(|pin| {
            let path = container.pin_dir().join(pin);
            let v = bpftool_json(&["link", "show", "pinned", path.to_str().expect("utf-8")]);
            v["id"].as_u64().expect("link id")
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// `bpftool --json ARGS`, parsed.
pub fn bpftool_json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("--json")
        .args(args)
        .output()
        .expect("bpftool");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bpftool --json {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `bpftool --json ARGS` as a list of objects.
fn bpftool(args: &[&str]) -> Vec<Value> {
    match bpftool_json(args) {
        Value::Array(items) => items,
        other => panic!("bpftool {args:?}: {other}"),
    }
}

/// Every BPF link id on the host.
pub fn all_link_ids() -> Vec<u64> {
    bpftool(&["link", "show"])
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

/// Loaded BPF programs named as one of dockops' programs.
pub fn dockops_programs() -> Vec<u64> {
    bpftool(&["prog", "show"])
        .iter()
        .filter(|p| {
            matches!(
                p["name"].as_str(),
                Some("tc_ingress_acct" | "tc_egress_acct" | "block_bio_acct" | "sock_pace")
            )
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// `tc ARGS` output.
pub fn tc(args: &[&str]) -> String {
    let out = Command::new("tc").args(args).output().expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tc ARGS` (the host's binary) run in the network namespace of process `pid`; its stdout.
pub fn tc_in(pid: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(["-t", pid, "-n", "tc"])
        .args(args)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A counter of a container from a stats JSON object.
pub fn counter<S: std::hash::BuildHasher>(
    stats: &HashMap<String, Value, S>,
    name: &str,
    field: &str,
) -> u64 {
    stats
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from stats: {:?}", stats.keys()))["network"]
        [field]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}.network.{field} is not a number"))
}

/// The value at a JSON pointer (`/memory/usage_bytes`) of one container's stats line.
pub fn field<S: std::hash::BuildHasher>(
    stats: &HashMap<String, Value, S>,
    name: &str,
    pointer: &str,
) -> Value {
    stats
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from stats: {:?}", stats.keys()))
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{name} has no {pointer}"))
        .clone()
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// GET `url` with curl (`--unix-socket` when given); the body.
pub fn http_get(url: &str, unix_socket: Option<&str>) -> Option<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sf", "--max-time", "5"]);
    if let Some(socket) = unix_socket {
        cmd.args(["--unix-socket", socket]);
    }
    let out = cmd.arg(url).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `dir/prometheus.yml`, a configuration that scrapes the exporter on loopback port
/// `exporter` every second; returns its path.
pub fn scrape_config(dir: &Path, exporter: u16) -> PathBuf {
    fs::create_dir_all(dir).expect("a directory for Prometheus");
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dockops\n    \
             static_configs:\n      - targets: ['127.0.0.1:{exporter}']\n"
        ),
    )
    .expect("writing prometheus.yml");
    config
}

/// A Prometheus server on a free loopback port, from the configuration at `config`, its data
/// under `dir`; killed on drop. Returns it and its port.
pub fn prometheus(config: &Path, dir: &Path) -> (Process, u16) {
    let web = free_port();
    let server = Process(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by cargo xtask setup)"),
    );
    (server, web)
}

/// A private bpffs directory for an object's pinned maps (tests that load the object
/// without the datapath), removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/dockops-test-<pid>-<tag>`, created now.
    pub fn create(tag: &str) -> Self {
        let dir = Self(PathBuf::from(format!(
            "/sys/fs/bpf/dockops-test-{}-{tag}",
            std::process::id()
        )));
        fs::create_dir_all(&dir.0).expect("bpffs (run through cargo xtask test, as root)");
        dir
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A process killed on drop (a Prometheus server, say).
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An iperf3 server and a client container, removed on drop.
pub struct Pair {
    pub server: Container,
    pub client: Container,
}

impl Pair {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// As [`Self::start`], with extra `docker run` options for the client (labels...).
    pub fn start_with(name: &str, client_options: &[&str]) -> Self {
        Self {
            // JSON, so that a client's --get-server-output carries the receiver's intervals.
            server: Container::start(&format!("{name}-srv"), "iperf3 -s -J"),
            client: Container::start_with(&format!("{name}-cli"), client_options, "sleep 600"),
        }
    }

    /// Goodput in bit/s of `iperf3 -c server ARGS` run in the client (`-R`: server sends).
    pub fn iperf(&self, args: &[&str]) -> f64 {
        let v = self.iperf_json(args);
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or_else(|| panic!("no goodput in {v}"))
    }

    /// Runs iperf3 for `seconds` in the client (`reverse`: the server sends) while `during`
    /// runs; returns bits per second of each second as the receiver saw them (a sender's
    /// first second also counts what filled its socket buffer) and the bytes received.
    pub fn iperf_while(
        &self,
        seconds: u32,
        reverse: bool,
        during: impl FnOnce(),
    ) -> (Vec<f64>, u64) {
        let t = seconds.to_string();
        let mut args = vec!["-t", &t, "-i", "1", "--get-server-output"];
        if reverse {
            args.push("-R");
        }
        let v = thread::scope(|scope| {
            let run = scope.spawn(|| self.iperf_json(&args));
            during();
            run.join().expect("iperf3 thread")
        });
        let receiver = if reverse {
            &v
        } else {
            &v["server_output_json"]
        };
        // The receiver may log a last sliver of an interval (a few ms, a huge rate): whole
        // seconds only.
        let per_second = receiver["intervals"]
            .as_array()
            .expect("intervals")
            .iter()
            .filter(|i| i["sum"]["seconds"].as_f64().is_some_and(|s| s >= 0.5))
            .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
            .collect();
        let bytes = v["end"]["sum_received"]["bytes"].as_u64().expect("bytes");
        (per_second, bytes)
    }

    /// `iperf3 -c server -J ARGS` in the client, parsed.
    fn iperf_json(&self, args: &[&str]) -> Value {
        let ip = self.server.ip();
        let out = Command::new("docker")
            .env("DOCKER_HOST", env("DOCKER_HOST"))
            .args(["exec", &self.client.id, "iperf3", "-c", &ip, "-J"])
            .args(args)
            .output()
            .expect("docker exec iperf3");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "iperf3 {args:?}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Whether this kernel can make an fq qdisc: tried on the loopback of a namespace of its own.
pub fn fq_works() -> bool {
    let ns = format!("dockops-it-fq-{}", std::process::id());
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .expect(program)
            .status
            .success()
    };
    assert!(run("ip", &["netns", "add", &ns]), "ip netns add {ns}");
    let works = run(
        "tc",
        &["-n", &ns, "qdisc", "add", "dev", "lo", "root", "fq"],
    );
    assert!(run("ip", &["netns", "del", &ns]), "ip netns del {ns}");
    works
}

//! Container resource stats against ground truth: known writes, known memory, known CPU time,
//! and a real Prometheus server scraping the exporter.

use std::{fs, time::Duration};

use dockops_integration::{
    Background, Container, dockops_ok, field, free_port, http_get, prometheus, scrape_config,
    stats_json, wait_for,
};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn stats_of(name: &str) -> serde_json::Map<String, Value> {
    let stats = stats_json();
    stats
        .get(name)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in stats"))
}

#[test]
fn direct_writes_are_counted_as_block_io() {
    let c = Container::start("blkio", "sleep 600");
    dockops_ok(&["stats"]);
    let before = field(&stats_json(), &c.name, "/blkio/write_bytes_total")
        .as_u64()
        .unwrap();
    c.exec("dd if=/dev/zero of=/tmp/f bs=1M count=64 oflag=direct 2>/dev/null");
    let stats = stats_json();
    let written = field(&stats, &c.name, "/blkio/write_bytes_total")
        .as_u64()
        .unwrap()
        - before;
    assert!(
        written >= 64 * MIB,
        "dd wrote 64 MiB, blkio counted {written} bytes"
    );
    assert!(
        written < 80 * MIB,
        "dd wrote 64 MiB, blkio counted {written} bytes"
    );
    let writes = field(&stats, &c.name, "/blkio/writes_total")
        .as_u64()
        .unwrap();
    assert!(writes >= 64, "64 direct 1 MiB writes, {writes} counted");
    let devices = field(&stats, &c.name, "/blkio/devices");
    let device = &devices.as_array().expect("devices")[0];
    assert!(
        device["major"].as_u64().is_some() && device["minor"].as_u64().is_some(),
        "{device}"
    );
}

#[test]
fn memory_usage_agrees_with_the_docker_stats_api() {
    let c = Container::start_with(
        "memory",
        &[
            "--shm-size",
            "256m",
            "--memory",
            "512m",
            "--pids-limit",
            "50",
        ],
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=100 2>/dev/null; sleep 600",
    );
    wait_for(Duration::from_secs(20), "/dev/shm to hold 100 MiB", || {
        c.exec("du -m /dev/shm/fill 2>/dev/null || true")
            .starts_with("100")
    });
    let socket = std::env::var("DOCKER_HOST").unwrap();
    let socket = socket.trim_start_matches("unix://");
    let api = http_get(
        &format!("http://localhost/containers/{}/stats?stream=false", c.id),
        Some(socket),
    )
    .expect("docker stats API");
    let ours = stats_of(&c.name);
    let api: Value = serde_json::from_str(&api).expect("stats JSON");
    let theirs = api["memory_stats"]["usage"]
        .as_u64()
        .expect("memory_stats.usage");
    let usage = ours["memory"]["usage_bytes"].as_u64().unwrap();
    #[expect(clippy::cast_precision_loss, reason = "ratio")]
    let ratio = usage as f64 / theirs as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "dockops {usage} vs docker API {theirs} bytes"
    );
    assert!(usage >= 100 * MIB, "100 MiB in /dev/shm, usage {usage}");
    assert_eq!(ours["memory"]["limit_bytes"], 512 * MIB);
    assert!(ours["memory"]["working_set_bytes"].as_u64().unwrap() <= usage);
    assert_eq!(ours["pids"]["limit"], 50);
    assert!(ours["pids"]["current"].as_u64().unwrap() >= 1);
}

#[test]
fn cpu_time_of_a_two_second_spin() {
    // The spin is started and awaited through files in a bind-mounted directory, not by
    // `docker exec`: runc's setup for an exec runs in the container's cgroup, and costs it
    // 0.4-0.9 s of CPU in the emulated guest of `cargo xtask vm-test`, too unsteady to subtract.
    let dir = std::env::temp_dir().join(format!("dockops-it-spin-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("a directory for the spin's files");
    let mount = format!("{}:/t", dir.display());
    let c = Container::start_with(
        "cpu",
        &["-v", &mount],
        "until [ -e /t/go ]; do sleep 0.2; done; \
         timeout -s KILL 2 sh -c 'while :; do :; done'; touch /t/done; exec sleep 600",
    );
    dockops_ok(&["stats"]);
    let before = stats_of(&c.name)["cpu"]["usage_seconds_total"]
        .as_f64()
        .unwrap();
    fs::write(dir.join("go"), b"").expect("starting the spin");
    wait_for(Duration::from_mins(1), "the 2 s spin to end", || {
        dir.join("done").exists()
    });
    let after = stats_of(&c.name);
    let spent = after["cpu"]["usage_seconds_total"].as_f64().unwrap() - before;
    let _ = fs::remove_dir_all(&dir);
    assert!(
        (1.6..=2.4).contains(&spent),
        "a 2 s spin used {spent:.3} s of CPU"
    );
    let user = after["cpu"]["user_seconds_total"].as_f64().unwrap();
    assert!(user >= 1.0, "the spin runs in user mode: {user:.2} s");
}

#[test]
fn cpu_percent_of_a_spinning_container() {
    let c = Container::start("spin", "while :; do :; done");
    let out = dockops_ok(&["stats", "--format", "json", "--sample", "1s", &c.name]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let percent = v["cpu"]["percent"]
        .as_f64()
        .expect("percent after two readings");
    assert!(
        (70.0..=110.0).contains(&percent),
        "one spinning thread shows {percent:.1}%"
    );
    let single = dockops_ok(&["stats", "--format", "json", "--sample", "0", &c.name]);
    let v: Value = serde_json::from_str(single.trim()).unwrap();
    assert_eq!(
        v["cpu"]["percent"],
        Value::Null,
        "a single reading has no percent"
    );
}

#[test]
fn prometheus_scrapes_the_exporter() {
    let c = Container::start("prom", "sleep 600");
    let exporter = free_port();
    let _watch = Background::start(&[
        "watch",
        "--format",
        "json",
        "--interval",
        "500ms",
        "--metrics-addr",
        &exporter.to_string(),
    ]);
    wait_for(
        Duration::from_secs(20),
        "the exporter to list the container",
        || {
            http_get(&format!("http://127.0.0.1:{exporter}/metrics"), None)
                .is_some_and(|m| m.contains(&c.name))
        },
    );
    // Full maps are visible: one series per map the programs insert into, zero here.
    let metrics = http_get(&format!("http://127.0.0.1:{exporter}/metrics"), None).unwrap();
    for map in ["BLOCK_IO", "WINDOWS", "PACED_SOCKETS"] {
        let line = format!("dockops_map_insert_failures_total{{map=\"{map}\"}} 0");
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }
    let dir = std::env::temp_dir().join(format!("dockops-it-prometheus-{}", std::process::id()));
    let config = scrape_config(&dir, exporter);
    let (_prometheus, web) = prometheus(&config, &dir);
    let query = format!(
        "http://127.0.0.1:{web}/api/v1/query?query=container_network_receive_bytes_total%7Bname%3D%22{}%22%7D",
        c.name
    );
    let mut answer = Value::Null;
    wait_for(
        Duration::from_mins(1),
        "Prometheus to have scraped the container's series",
        || {
            answer = http_get(&query, None)
                .and_then(|b| serde_json::from_str(&b).ok())
                .unwrap_or(Value::Null);
            answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    );
    let series = &answer["data"]["result"][0];
    // cAdvisor's id: the cgroup path (`/docker/<id>`).
    assert!(
        series["metric"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with('/') && id.ends_with(&c.id)),
        "{series}"
    );
    assert_eq!(
        series["metric"]["image"],
        std::env::var("DOCKOPS_TEST_IMAGE").unwrap().as_str()
    );
    assert!(
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some(),
        "{series}"
    );
    let _ = fs::remove_dir_all(&dir);
}

//! The Prometheus endpoint as a drop-in for cAdvisor's: the container and machine queries
//! of popular cAdvisor dashboards (dockprom's "Docker Containers", Grafana 193 "Docker
//! monitoring") and the families cAdvisor dashboards and alerts lean on, run by a real
//! Prometheus scraping `watch --metrics-addr`, each checked against what the test knows
//! about its containers.

use std::{fs, thread, time::Duration};

use dockops_integration::{
    Background, Container, docker, free_port, http_get, prometheus, scrape_config, wait_for,
};
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

/// Runs an instant query; each series' labels and value.
fn query(web: u16, expr: &str) -> Vec<(Value, f64)> {
    let url = format!(
        "http://127.0.0.1:{web}/api/v1/query?query={}",
        urlencode(expr)
    );
    let body: Value = http_get(&url, None)
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_else(|| panic!("Prometheus did not answer {expr}"));
    assert_eq!(body["status"], "success", "{expr}: {body}");
    let data = &body["data"];
    let value = |v: &Value| {
        v[1].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{expr}: {v}"))
    };
    match data["resultType"].as_str() {
        Some("scalar") => vec![(Value::Null, value(&data["result"]))],
        _ => data["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|s| (s["metric"].clone(), value(&s["value"])))
            .collect(),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The one value of `expr` for the series whose `name` label is `name` (or the only one).
fn value_of(web: u16, expr: &str, name: Option<&str>) -> f64 {
    let series = query(web, expr);
    let matching: Vec<f64> = series
        .iter()
        .filter(|(labels, _)| name.is_none_or(|n| labels["name"] == n))
        .map(|(_, v)| *v)
        .collect();
    eprintln!("{expr} [{}]: {matching:?}", name.unwrap_or("-"));
    assert_eq!(matching.len(), 1, "{expr} for {name:?}: {series:?}");
    matching[0]
}

fn within(what: &str, value: f64, low: f64, high: f64) {
    assert!(
        (low..=high).contains(&value),
        "{what}: {value}, expected {low}..={high}"
    );
}

/// The containers, the exporter and the Prometheus scraping it, removed on drop.
struct Setup {
    truth: Container,
    spin: Container,
    _client: Container,
    _watch: Background,
    _prometheus: dockops_integration::Process,
    web: u16,
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn setup() -> Setup {
    // `truth`: known limits, labels, 16 MiB in /dev/shm (page cache), four processes, one
    // of them running a copy of busybox the container wrote (its mapped pages are the
    // container's), and a 4 MiB file it serves once. `spin`: half a CPU, used in full.
    let truth = Container::start_with(
        "cadv-truth",
        &[
            "--memory",
            "64m",
            "--memory-swap",
            "128m",
            "--cpus",
            "0.5",
            "--cpu-shares",
            "512",
            "--pids-limit",
            "50",
            "--label",
            "com.docker.compose.project=shop",
        ],
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=16 2>/dev/null; \
         mkdir -p /www && dd if=/dev/zero of=/www/blob bs=1M count=4 2>/dev/null; \
         mkdir /tmp/copy; cp /bin/busybox /tmp/copy/; httpd -p 8080 -h /www; /tmp/copy/busybox sleep 600 & sleep 600 & wait",
    );
    let spin = Container::start_with("cadv-spin", &["--cpus", "0.5"], "while :; do :; done");
    let client = Container::start("cadv-client", "sleep 600");
    let url = format!("http://{}:8080/blob", truth.ip());
    wait_for(Duration::from_secs(20), "the HTTP server", || {
        client.exec_ok(&format!("wget -q --spider {url}"))
    });
    let exporter = free_port();
    let watch = Background::start(&[
        "watch",
        "--format",
        "none",
        "--interval",
        "1s",
        "--metrics-addr",
        &exporter.to_string(),
    ]);
    let dir = std::env::temp_dir().join(format!("dockops-it-cadvisor-{}", std::process::id()));
    let config = scrape_config(&dir, exporter);
    let (server, web) = prometheus(&config, &dir);
    wait_for(Duration::from_mins(1), "Prometheus to scrape", || {
        http_get(
            &format!("http://127.0.0.1:{web}/api/v1/query?query=container_last_seen"),
            None,
        )
        .is_some_and(|b| b.contains(&spin.name))
    });
    // Counted from here on: the tc programs are attached.
    client.exec(&format!("wget -q -O /dev/null {url}"));
    // The dashboards' rate(...[1m]) divide by the whole minute: a minute of samples.
    thread::sleep(Duration::from_secs(62));
    Setup {
        truth,
        spin,
        _client: client,
        _watch: watch,
        _prometheus: server,
        web,
        dir,
    }
}

#[test]
fn cadvisor_dashboard_queries_answer_with_the_truth() {
    let setup = setup();
    let web = setup.web;
    let (t, s) = (
        Some(setup.truth.name.as_str()),
        Some(setup.spin.name.as_str()),
    );
    machine(web);
    memory(web, t);
    cpu(web, s);
    network(web, t);
    specs_and_times(web, &setup.truth);
}

fn machine(web: u16) {
    let cores =
        f64::from(u32::try_from(std::thread::available_parallelism().unwrap().get()).unwrap());
    within(
        "machine_cpu_cores",
        value_of(web, "machine_cpu_cores", None),
        cores,
        cores,
    );
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    within(
        "machine_memory_bytes",
        value_of(web, "machine_memory_bytes", None),
        kib * 1024.0,
        kib * 1024.0,
    );
    within(
        "container_scrape_error",
        value_of(web, "container_scrape_error", None),
        0.0,
        0.0,
    );
}

fn memory(web: u16, t: Option<&str>) {
    // dockprom "Docker Containers" and Grafana 193: counts of running containers.
    for expr in [
        r#"scalar(count(container_memory_usage_bytes{image!=""}) > 0)"#,
        r#"count(container_last_seen{image!=""})"#,
    ] {
        within(expr, value_of(web, expr, None), 3.0, 100.0);
    }
    // By name, as the dashboards filter it.
    let shm = 16.0 * MIB;
    within(
        "cache",
        value_of(
            web,
            r#"sum by (name) (container_memory_cache{image!="",container_label_org_label_schema_group=""})"#,
            t,
        ),
        shm,
        64.0 * MIB,
    );
    within(
        "usage",
        value_of(
            web,
            r#"sum by (name)(container_memory_usage_bytes{image!="",container_label_org_label_schema_group=""})"#,
            t,
        ),
        shm,
        64.0 * MIB,
    );
    within(
        "193 memory",
        value_of(web, r#"container_memory_usage_bytes{image!=""}"#, t),
        shm,
        64.0 * MIB,
    );
    within(
        "rss",
        value_of(web, "container_memory_rss", t),
        4096.0,
        16.0 * MIB,
    );
    within(
        "mapped files (the busybox copy it runs)",
        value_of(web, "container_memory_mapped_file", t),
        4096.0,
        64.0 * MIB,
    );
    within(
        "by compose project",
        value_of(
            web,
            r#"sum by (container_label_com_docker_compose_project) (container_memory_usage_bytes{container_label_com_docker_compose_project="shop"})"#,
            None,
        ),
        16.0 * MIB,
        64.0 * MIB,
    );
}

/// The spinner uses its half CPU, mostly in user mode, throttled every period.
fn cpu(web: u16, s: Option<&str>) {
    within(
        "usage rate",
        value_of(
            web,
            r#"sum by (name) (rate(container_cpu_usage_seconds_total{image!="",container_label_org_label_schema_group=""}[1m]))"#,
            s,
        ),
        0.35,
        0.6,
    );
    within(
        // Over [5m] with about a minute of samples, Prometheus reports about a fifth.
        "193 user %",
        value_of(
            web,
            r#"rate(container_cpu_user_seconds_total{image!=""}[5m]) * 100"#,
            s,
        ),
        5.0,
        60.0,
    );
    assert!(
        value_of(
            web,
            "rate(container_cpu_cfs_throttled_periods_total[1m])",
            s
        ) > 1.0,
        "the spinner is throttled every period"
    );
    assert!(
        value_of(
            web,
            "rate(container_pressure_cpu_waiting_seconds_total[1m])",
            s
        ) > 0.05,
        "the throttled spinner's CPU pressure"
    );
}

/// The 4 MiB the client downloaded left `truth`, without errors or drops.
fn network(web: u16, t: Option<&str>) {
    let sent = value_of(web, "container_network_transmit_bytes_total", t);
    within("bytes sent", sent, 4.0 * MIB, 5.0 * MIB);
    within(
        "193 tx rate",
        value_of(
            web,
            r#"irate(container_network_transmit_bytes_total{image!=""}[5m])"#,
            t,
        ),
        0.0,
        1e6,
    );
    for expr in [
        "container_network_receive_errors_total",
        "container_network_transmit_errors_total",
        "container_network_receive_packets_dropped_total",
        "container_network_transmit_packets_dropped_total",
    ] {
        within(expr, value_of(web, expr, t), 0.0, 0.0);
    }
}

fn specs_and_times(web: u16, truth: &Container) {
    let t = Some(truth.name.as_str());
    for (expr, want) in [
        ("container_spec_cpu_quota / container_spec_cpu_period", 0.5),
        ("container_spec_cpu_shares", 512.0),
        ("container_spec_memory_limit_bytes", 64.0 * MIB),
        ("container_spec_memory_swap_limit_bytes", 128.0 * MIB),
        ("container_threads_max", 50.0),
        // sh, two sleeps, httpd.
        ("container_processes", 4.0),
        ("container_threads", 4.0),
    ] {
        within(expr, value_of(web, expr, t), want, want);
    }
    // Times.
    let started = docker(&["inspect", "-f", "{{.State.StartedAt}}", &truth.id]);
    let started = date_seconds(&started);
    within(
        "start time",
        value_of(web, "container_start_time_seconds", t),
        started - 1.0,
        started + 1.0,
    );
    within(
        "last seen",
        value_of(web, "time() - container_last_seen", t),
        -1.0,
        5.0,
    );
    // cAdvisor's id label: the cgroup path, which holds the container id.
    let ids = query(
        web,
        &format!("container_last_seen{{name=\"{}\"}}", truth.name),
    );
    let id = ids[0].0["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with('/') && id.contains(&truth.id),
        "id {id} is not the cgroup path of {}",
        truth.id
    );
}

/// `date -d` as seconds since the epoch (Docker's RFC 3339 with nanoseconds).
fn date_seconds(rfc3339: &str) -> f64 {
    let out = std::process::Command::new("date")
        .args(["-d", rfc3339, "+%s.%N"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("seconds")
}

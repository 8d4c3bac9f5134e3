//! What `deploy/` ships, checked with the tools that consume it: the Kubernetes manifests
//! against the API schemas, the Prometheus configuration with promtool, and every query of
//! the Grafana dashboard against a real Prometheus scraping the agent.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use dockops_integration::{Background, Container, free_port, prometheus, wait_for};
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubernetes-validate --strict FILE` (installed by `cargo xtask setup`).
fn validate(file: &Path) -> std::process::Output {
    Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .arg(file)
        .env(
            "PYTHONPATH",
            std::env::var("DOCKOPS_K8S_VALIDATE").expect("DOCKOPS_K8S_VALIDATE"),
        )
        .output()
        .expect("python3")
}

#[test]
fn kubernetes_manifests_pass_the_api_schemas_strictly() {
    let manifest = deploy().join("kubernetes/dockops.yaml");
    let out = validate(&manifest);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator bites: a misspelt field fails it.
    let text = fs::read_to_string(&manifest).expect("manifest");
    let typo = std::env::temp_dir().join(format!("dockops-it-typo-{}.yaml", std::process::id()));
    fs::write(&typo, text.replace("hostPID:", "hostPid:")).expect("write");
    let out = validate(&typo);
    let _ = fs::remove_file(&typo);
    assert!(!out.status.success(), "a misspelt field passed");
}

#[test]
fn the_prometheus_configuration_passes_promtool() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy().join("prometheus/prometheus.yml"))
        .output()
        .expect("promtool (cargo xtask setup installs prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_dashboard_query_is_answered_by_prometheus_scraping_the_agent() {
    let capped = Container::start_with(
        "dash",
        &["--label", "dockops.egress=30mbit"],
        "while :; do dd if=/dev/zero of=/tmp/f bs=64k count=16 oflag=direct 2>/dev/null; \
         sleep 1; done",
    );
    let exporter = free_port();
    let _agent = Background::start(&[
        "watch",
        "--format",
        "none",
        "--interval",
        "500ms",
        "--metrics-addr",
        &exporter.to_string(),
    ]);
    // The shipped configuration, pointed at this agent and scraping every second.
    let dir = std::env::temp_dir().join(format!("dockops-it-dash-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    let shipped = fs::read_to_string(deploy().join("prometheus/prometheus.yml")).expect("config");
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        shipped
            .replace("127.0.0.1:9101", &format!("127.0.0.1:{exporter}"))
            .replace("scrape_interval: 15s", "scrape_interval: 1s"),
    )
    .expect("write config");
    let (_prometheus, web) = prometheus(&config, &dir);
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(deploy().join("grafana/dockops.json")).unwrap())
            .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let query = |expr: &str| -> Vec<Value> {
        let expr = expr
            .replace("$container", ".+")
            .replace("$__rate_interval", "5s");
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-G"])
            .arg(format!("http://127.0.0.1:{web}/api/v1/query"))
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .expect("curl");
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            wait_for(
                Duration::from_mins(1),
                &format!("an answer to {:?}: {expr}", panel["title"]),
                || !query(expr).is_empty(),
            );
        }
    }
    // Values, not just presence: the capped container's cap as it was set.
    let caps = panels
        .iter()
        .find(|p| p["title"] == "Bandwidth caps")
        .expect("a caps panel");
    let series = query(caps["targets"][0]["expr"].as_str().expect("expr"));
    let ours = series
        .iter()
        .find(|s| s["metric"]["name"] == capped.name.as_str())
        .unwrap_or_else(|| panic!("no cap for {} in {series:?}", capped.name));
    assert_eq!(ours["value"][1], "30000000");
    let written = panels
        .iter()
        .find(|p| p["title"] == "Block IO written")
        .expect("a block IO panel");
    let series = query(written["targets"][0]["expr"].as_str().expect("expr"));
    assert!(
        series
            .iter()
            .any(|s| s["metric"]["name"] == capped.name.as_str()
                && s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)),
        "no writes by {} in {series:?}",
        capped.name
    );
    let _ = fs::remove_dir_all(&dir);
}

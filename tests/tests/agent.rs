//! `watch` as the agent: limits declared in labels and a policy file, applied to every
//! kind of limit, CLI > label > file, followed as the file changes.

use std::{fs, path::PathBuf, time::Duration};

use dockops_integration::{Background, Container, docker, dockops_ok, wait_for};
use serde_json::Value;

fn inspect(c: &Container, field: &str) -> i64 {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{.HostConfig.{field}}}}}"),
        &c.id,
    ])
    .parse()
    .unwrap_or_else(|e| panic!("{field} of {}: {e}", c.name))
}

/// `show --format json`'s row for `limit`: (value, source).
fn shown(c: &Container, limit: &str) -> (Value, String) {
    let show: Value = serde_json::from_str(&dockops_ok(&["show", &c.name, "--format", "json"]))
        .expect("show JSON");
    let row = show["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|r| r["limit"].as_str().is_some_and(|l| l.starts_with(limit)))
        .unwrap_or_else(|| panic!("no {limit} in {show}"))
        .clone();
    (
        row["value"].clone(),
        row["source"].as_str().unwrap_or("").to_owned(),
    )
}

/// A policy file in a directory of its own, removed on drop.
struct PolicyFile(PathBuf);

impl PolicyFile {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dockops-it-policy-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("policy dir");
        let file = Self(dir.join("policy.toml"));
        file.write(text);
        file
    }

    /// Replaces the file atomically, as editors and config managers do.
    fn write(&self, text: &str) {
        let tmp = self.0.with_extension("tmp");
        fs::write(&tmp, text).expect("write policy");
        fs::rename(&tmp, &self.0).expect("rename policy");
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.0.parent().expect("dir"));
    }
}

const RULES: &str = r#"
[[rule]]
name = "dockops-it-policy-*"
memory = "96m"
pids-limit = 64
cpus = "0.5"

[[rule]]
name = "dockops-it-policy-b"
egress = "20mbit"
"#;

#[test]
fn labels_and_the_policy_file_set_every_limit_cli_over_label_over_file() {
    let policy = PolicyFile::new(RULES);
    let a = Container::start_with(
        "policy-a",
        &[
            "--label",
            "dockops.memory=64m",
            "--label",
            "dockops.cpu-shares=512",
        ],
        "sleep 600",
    );
    let b = Container::start_with(
        "policy-b",
        // A bad label is refused; the container's other limits still apply.
        &[
            "--label",
            "dockops.memory=lots",
            "--label",
            "dockops.pids-limit=32",
        ],
        "sleep 600",
    );
    let bystander = Container::start("bystander", "sleep 600");
    let watch = Background::start(&[
        "watch",
        "--format",
        "json",
        "--interval",
        "200ms",
        "--policy",
        policy.path(),
    ]);
    wait_for(
        Duration::from_secs(20),
        "a's limits from labels and file",
        || inspect(&a, "Memory") == 64 << 20 && inspect(&a, "PidsLimit") == 64,
    );
    assert_eq!(inspect(&a, "NanoCpus"), 500_000_000, "cpus from the file");
    assert_eq!(inspect(&a, "CpuShares"), 512, "cpu-shares from a label");
    assert_eq!(
        shown(&a, "memory"),
        (Value::from(64 << 20), "label".to_owned())
    );
    assert_eq!(shown(&a, "pids-limit").1, "policy rule 1");
    assert_eq!(shown(&a, "cpus").1, "policy rule 1");
    wait_for(Duration::from_secs(10), "b's limits", || {
        inspect(&b, "PidsLimit") == 32 && inspect(&b, "Memory") == 96 << 20
    });
    let (egress, source) = shown(&b, "egress");
    assert_eq!(
        (egress, source.as_str()),
        (Value::from(20_000_000), "policy rule 2")
    );
    let show: Value = serde_json::from_str(&dockops_ok(&["show", &b.name, "--format", "json"]))
        .expect("show JSON");
    assert!(
        show["label_errors"].to_string().contains("dockops.memory"),
        "{show}"
    );
    // Nothing reaches a container that neither labels nor rules name.
    assert_eq!(
        (
            inspect(&bystander, "Memory"),
            inspect(&bystander, "NanoCpus")
        ),
        (0, 0)
    );

    // `limit` wins, and the agent leaves it alone (its update is an event the agent sees).
    dockops_ok(&["limit", &a.name, "--memory", "128m"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(inspect(&a, "Memory"), 128 << 20);
    assert_eq!(shown(&a, "memory").1, "dockops");
    // Drift is repaired: someone lowers the pids limit behind the agent's back.
    docker(&["update", "--pids-limit", "1000", &a.id]);
    wait_for(Duration::from_secs(5), "the pids limit repaired", || {
        inspect(&a, "PidsLimit") == 64
    });

    // A file that is not TOML keeps the rules in force; a good one replaces them: rule 2
    // gone lifts b's cap, pids-limit gone lifts a's.
    policy.write("[[rule]\nname = ");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(inspect(&a, "PidsLimit"), 64);
    policy.write(
        r#"
        [[rule]]
        name = "dockops-it-policy-*"
        memory = "96m"
        cpus = "0.5"
        "#,
    );
    wait_for(Duration::from_secs(5), "a's pids limit lifted", || {
        inspect(&a, "PidsLimit") <= 0
    });
    wait_for(Duration::from_secs(5), "b's cap lifted", || {
        shown(&b, "egress").0.is_null()
    });
    assert_eq!(inspect(&b, "PidsLimit"), 32, "b's label still holds");
    assert_eq!(inspect(&a, "NanoCpus"), 500_000_000);
    drop(watch);
}

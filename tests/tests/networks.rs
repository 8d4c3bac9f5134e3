//! Containers beyond the default bridge: each is listed with what dockops cannot do for it,
//! none breaks the others, and nothing is attached to a host interface that is not a
//! container's veth.

use std::{collections::BTreeSet, process::Command, time::Duration};

use dockops_integration::{
    Background, Container, PINS, docker, dockops_ok, field, list, stats_json, wait_for,
};
use serde_json::Value;

/// Runs `cmd`, ignoring failures (cleanup of what may not exist).
fn quietly(cmd: &mut Command) {
    let _ = cmd.output();
}

/// A single-node swarm with an attachable overlay network, a macvlan network on a veth
/// parent, torn down on drop.
struct Networks;

const OVERLAY: &str = "dockops-it-ovl";
const MACVLAN: &str = "dockops-it-mvl";
/// The macvlan parent: a veth pair of the test's own (this kernel has no dummy driver).
const DUMMY: &str = "dockops-it-dum";
const DUMMY_PEER: &str = "dockops-it-dup";

impl Networks {
    fn create() -> Self {
        let guard = Self;
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            "10.251.0.0/24",
            OVERLAY,
        ]);
        let ok = Command::new("ip")
            .args([
                "link", "add", DUMMY, "type", "veth", "peer", "name", DUMMY_PEER,
            ])
            .status()
            .expect("ip");
        assert!(ok.success(), "ip link add {DUMMY} type veth");
        docker(&[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "10.252.0.0/24",
            "-o",
            &format!("parent={DUMMY}"),
            MACVLAN,
        ]);
        guard
    }
}

impl Drop for Networks {
    fn drop(&mut self) {
        let host = std::env::var("DOCKER_HOST").unwrap_or_default();
        for args in [
            vec!["network", "rm", OVERLAY],
            vec!["network", "rm", MACVLAN],
            vec!["swarm", "leave", "--force"],
        ] {
            quietly(Command::new("docker").env("DOCKER_HOST", &host).args(args));
        }
        quietly(Command::new("ip").args(["link", "del", DUMMY]));
    }
}

/// The host ifindex of the peer of `dev` inside the container.
fn peer_index(c: &Container, dev: &str) -> u32 {
    c.exec(&format!("cat /sys/class/net/{dev}/iflink"))
        .parse()
        .expect("iflink")
}

fn notes(stats: &std::collections::HashMap<String, Value>, name: &str) -> String {
    field(stats, name, "/notes").to_string()
}

#[test]
fn odd_networks_are_listed_with_notes_and_break_nothing() {
    let normal = Container::start("net-normal", "sleep 600");
    let nets = Networks::create();
    let overlay = Container::start_with("net-overlay", &["--network", OVERLAY], "sleep 600");
    let macvlan = Container::start_with("net-macvlan", &["--network", MACVLAN], "sleep 600");
    let host = Container::start_with("net-host", &["--network", "host"], "sleep 600");
    let shared = Container::start_with(
        "net-shared",
        &["--network", &format!("container:{}", normal.id)],
        "sleep 600",
    );

    let stats = stats_json();
    for c in [&normal, &overlay, &macvlan, &host, &shared] {
        assert!(stats.contains_key(&c.name), "{} missing from stats", c.name);
    }
    assert_eq!(notes(&stats, &normal.name), "[]");
    assert!(notes(&stats, &host.name).contains("host's network"));
    assert!(notes(&stats, &shared.name).contains("shares the network namespace"));
    assert!(notes(&stats, &macvlan.name).contains("macvlan"));
    assert!(
        notes(&stats, &overlay.name).contains("eth0: its veth peer is in another network"),
        "{}",
        notes(&stats, &overlay.name)
    );

    // Only container veths carry pins: the normal one's and the overlay container's
    // docker_gwbridge veth (eth1), never the index its eth0 peer has in the sandbox.
    let pinned = |c: &Container| -> BTreeSet<u32> {
        list(&c.pin_dir())
            .iter()
            .filter_map(|p| p.split('-').next()?.parse().ok())
            .collect()
    };
    assert_eq!(pinned(&normal), BTreeSet::from([normal.host_veth().0]));
    assert_eq!(
        pinned(&overlay),
        BTreeSet::from([peer_index(&overlay, "eth1")])
    );
    for c in [&macvlan, &host, &shared] {
        assert!(pinned(c).is_empty(), "{} has pins", c.name);
    }
    let dirs = list(&std::path::Path::new(PINS).join("links"));
    assert_eq!(dirs.len(), 2, "pin directories: {dirs:?}");

    // The normal one is counted (its namespace's traffic, also what the shared one sends)
    // and can be capped; the host one cannot, and says why.
    let before = field(&stats, &normal.name, "/network/tx_packets_total")
        .as_u64()
        .unwrap();
    shared.exec("ping -c 3 -W 1 172.17.0.1 >/dev/null || true");
    let after = field(&stats_json(), &normal.name, "/network/tx_packets_total")
        .as_u64()
        .unwrap();
    assert!(after >= before + 3, "tx packets {before} → {after}");
    dockops_ok(&["limit", &normal.name, "--egress", "10mbit"]);
    let out = dockops_integration::dockops(&["limit", &host.name, "--egress", "10mbit"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host's network"));
    drop((overlay, macvlan, host, shared));
    drop(nets);
}

#[test]
fn a_failed_attach_for_one_container_leaves_the_others_counted() {
    let a = Container::start("fail-a", "sleep 600");
    let b = Container::start("fail-b", "sleep 600");
    let watch = Background::start(&["watch", "--format", "json", "--interval", "300ms"]);
    wait_for(Duration::from_secs(10), "watch to attach to a", || {
        list(&a.pin_dir()).len() == 2
    });
    // a's veth goes away behind watch's back, and its pins with it: the next reconcile
    // (for c's start) tries to attach to an interface that is gone.
    let (_, veth) = a.host_veth();
    let ok = Command::new("ip")
        .args(["link", "del", &veth])
        .status()
        .expect("ip");
    assert!(ok.success());
    std::fs::remove_dir_all(a.pin_dir()).expect("remove a's pins");
    let c = Container::start("fail-c", "sleep 600");
    wait_for(Duration::from_secs(10), "watch to attach to c", || {
        list(&c.pin_dir()).len() == 2
    });
    let ip = b.ip();
    c.exec(&format!("ping -c 3 -W 1 {ip} >/dev/null"));
    wait_for(
        Duration::from_secs(10),
        "c's pings counted and a's failure noted",
        || {
            let lines: Vec<Value> = watch
                .output()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let last = |name: &str| lines.iter().rev().find(|v| v["name"] == name).cloned();
            let counted =
                last(&c.name).is_some_and(|v| v["network"]["tx_packets_total"].as_u64() >= Some(3));
            let noted = last(&a.name).is_some_and(|v| v["notes"].to_string().contains("failed"));
            counted && noted
        },
    );
    assert_eq!(list(&b.pin_dir()).len(), 2, "b lost its pins");
    drop(watch);
}

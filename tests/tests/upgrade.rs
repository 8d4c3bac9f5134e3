//! Upgrades and reboots keep what the operator asked for. `cargo xtask test` builds three
//! variants of the binary whose eBPF objects differ from the default one: `variant-code`
//! (same map layouts), `variant-layout` (`CAPS`, `CAPS6`, `TRAFFIC`, `TC_CAPS` and
//! `PACED_SOCKETS` resized) and `variant-unverifiable` (a pacing program the kernel refuses).
//! Switching between binaries is an upgrade (or a downgrade) on a live host.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use dockops_integration::{
    Background, Container, PINS, Pair, bpftool_json, counter, docker, dockops, dockops_ok,
    dockops_variant_cmd, field, link_ids, list, stats_json, tc, tc_in, wait_for,
};
use serde_json::Value;

const CAP: u64 = 20_000_000;
const STATE: &str = "/var/lib/dockops/state.json";

/// Runs `dockops-bpf ARGS` built with the eBPF object `variant`; returns its stderr.
fn variant(variant: &str, args: &[&str]) -> String {
    let out = dockops_variant_cmd(variant)
        .args(args)
        .output()
        .expect("running a variant of dockops-bpf");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{variant} {args:?} failed: {}\n{stderr}",
        out.status
    );
    stderr
}

#[expect(clippy::cast_precision_loss, reason = "ratios")]
fn assert_capped(per_second: &[f64], what: &str) {
    eprintln!("{what}: bit/s per second {per_second:?}");
    assert!(per_second.len() >= 8, "{what}: {per_second:?}");
    let cap = CAP as f64;
    for (second, &bps) in per_second.iter().enumerate() {
        // As the receiver sees it (the sender's first second also counts its socket
        // buffer's first fill, 1.1–1.44× measured). The swaps come at 3 s and 6 s: no second
        // may pass 1.1× the cap.
        assert!(
            bps <= 1.1 * cap,
            "{what}: second {second} at {:.2}× the cap: {per_second:?}",
            bps / cap
        );
        // After the first second the flow runs at the cap: nothing stalled either.
        assert!(
            second == 0 || bps >= 0.6 * cap,
            "{what}: second {second} at {:.2}× the cap: {per_second:?}",
            bps / cap
        );
    }
}

/// `bpftool map show pinned` of one of dockops' maps.
fn map_info(name: &str) -> Value {
    let path = Path::new(PINS).join("maps").join(name);
    bpftool_json(&["map", "show", "pinned", path.to_str().expect("utf-8")])
}

/// Program ids the container's pinned tcx links run.
fn link_programs(c: &Container) -> Vec<u64> {
    list(&c.pin_dir())
        .iter()
        .map(|pin| {
            let path = c.pin_dir().join(pin);
            let v = bpftool_json(&["link", "show", "pinned", path.to_str().expect("utf-8")]);
            v["prog_id"].as_u64().expect("prog_id")
        })
        .collect()
}

#[test]
fn upgrade_swaps_programs_in_place_and_keeps_caps_and_counters() {
    dockops_ok(&["reset", "--all"]);
    let pair = Pair::start("upg");
    dockops_ok(&["limit", &pair.client.name, "--egress", "20mbit"]);
    let links = link_ids(&pair.client);
    let programs = link_programs(&pair.client);
    let before = counter(&stats_json(), &pair.client.name, "tx_bytes_total");
    let started = Instant::now();
    let (per_second, received) = pair.iperf_while(9, false, || {
        thread::sleep(Duration::from_secs(3));
        let stderr = variant("variant-code", &["stats"]);
        assert!(!stderr.contains("restart"), "counters restarted: {stderr}");
        thread::sleep(Duration::from_secs(3));
        // Back to the default build: a downgrade is an upgrade too.
        dockops_ok(&["stats"]);
    });
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_capped(&per_second, "egress across two swaps");
    let stats = stats_json();
    assert_eq!(field(&stats, &pair.client.name, "/limits/egress_bps"), CAP);
    let after = counter(&stats, &pair.client.name, "tx_bytes_total");
    // The container's counters went on: they hold at least what iperf3 moved.
    assert!(
        after - before >= received,
        "counters restarted: {before} -> {after}, iperf3 moved {received}"
    );
    assert_eq!(link_ids(&pair.client), links, "links were re-created");
    let now = link_programs(&pair.client);
    assert!(
        now.iter().all(|p| !programs.contains(p)),
        "the links still run the old programs {programs:?}: {now:?}"
    );
    let markers: Vec<String> = list(Path::new(PINS))
        .into_iter()
        .filter(|n| n.starts_with("build-"))
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
}

#[test]
fn upgrade_rebuilds_a_changed_map_and_reapplies_caps() {
    dockops_ok(&["reset", "--all"]);
    let pair = Pair::start("layout");
    dockops_ok(&["limit", &pair.client.name, "--ingress", "20mbit"]);
    assert_eq!(map_info("CAPS")["max_entries"], 8192);
    let (per_second, _) = pair.iperf_while(9, true, || {
        thread::sleep(Duration::from_secs(3));
        let stderr = variant("variant-layout", &["stats"]);
        assert!(
            stderr.contains("map TRAFFIC has a new layout")
                && stderr.contains("counters restart from zero"),
            "no warning that counters restart: {stderr}"
        );
        assert!(stderr.contains("map CAPS has a new layout"), "{stderr}");
        assert_eq!(map_info("CAPS")["max_entries"], 8193);
        thread::sleep(Duration::from_secs(3));
        dockops_ok(&["stats"]);
    });
    assert_capped(&per_second, "ingress across two map rebuilds");
    assert_eq!(map_info("CAPS")["max_entries"], 8192);
    assert_eq!(
        field(&stats_json(), &pair.client.name, "/limits/ingress_bps"),
        CAP
    );
}

#[test]
fn upgrade_replaces_netlink_filters_in_place() {
    dockops_ok(&["reset", "--all"]);
    let c = Container::start("upg-nl", "sleep 600");
    dockops_ok(&["--tc-attach", "netlink", "stats"]);
    let (ifindex, veth) = c.host_veth();
    let pins = list(&c.pin_dir());
    assert!(
        pins.iter()
            .all(|p| p.starts_with(&format!("{ifindex}-")) && p.contains("-netlink-")),
        "{pins:?}"
    );
    let filters = || tc(&["filter", "show", "dev", &veth, "ingress"]);
    let old = filters();
    variant("variant-code", &["--tc-attach", "netlink", "stats"]);
    let new = filters();
    // One filter, at the same priority and handle, running another program.
    let filter = |s: &str| -> (String, String) {
        let lines: Vec<&str> = s.lines().filter(|l| l.contains(" handle ")).collect();
        assert_eq!(lines.len(), 1, "one filter: {s}");
        let (place, program) = lines[0].split_once(" direct-action").expect("a bpf filter");
        let id = program.split(" id ").nth(1).expect("program id");
        (
            place.to_owned(),
            id.split(' ').next().unwrap_or_default().to_owned(),
        )
    };
    let (old_place, old_id) = filter(&old);
    let (new_place, new_id) = filter(&new);
    assert_eq!(
        old_place, new_place,
        "not replaced in place: {old} -> {new}"
    );
    assert_ne!(
        old_id, new_id,
        "the filter still runs the old program: {new}"
    );
    assert_eq!(list(&c.pin_dir()), pins);
    dockops_ok(&["reset"]);
    assert!(!tc(&["qdisc", "show", "dev", &veth]).contains("clsact"));
}

#[test]
fn upgrade_or_reboot_caps_come_back_and_reset_all_forgets_them() {
    dockops_ok(&["reset", "--all"]);
    let pair = Pair::start("reboot");
    dockops_ok(&["limit", &pair.client.name, "--egress", "20mbit"]);
    let state = std::fs::read_to_string(STATE).expect("state file");
    assert!(state.contains(&pair.client.id), "{state}");
    let mode = std::fs::metadata(STATE).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A reboot empties bpffs: `reset` does the same and keeps the state file.
    let out = dockops_ok(&["reset"]);
    assert!(out.contains("kept the caps of 1 container"), "{out}");
    assert!(!Path::new(PINS).exists());
    dockops_ok(&["stats"]);
    let (per_second, _) = pair.iperf_while(8, false, || {});
    assert_capped(&per_second, "egress after a reboot");
    assert_eq!(
        field(&stats_json(), &pair.client.name, "/limits/egress_bps"),
        CAP
    );

    // unlimit forgets, in the store too.
    dockops_ok(&["unlimit", &pair.client.name]);
    let state = std::fs::read_to_string(STATE).expect("state file");
    assert!(!state.contains(&pair.client.id), "{state}");
    dockops_ok(&["limit", &pair.client.name, "--egress", "20mbit"]);
    let out = dockops_ok(&["reset", "--all"]);
    assert!(out.contains(STATE), "{out}");
    assert!(!Path::new(STATE).exists());
    assert_eq!(
        field(&stats_json(), &pair.client.name, "/limits/egress_bps"),
        Value::Null
    );
}

#[test]
fn upgrade_carries_over_caps_an_older_build_kept_in_its_map() {
    dockops_ok(&["reset", "--all"]);
    let c = Container::start("legacy", "sleep 600");
    dockops_ok(&["stats"]);
    // What a build before the state file left: DESIRED_CAPS, its own build marker.
    let map = Path::new(PINS).join("maps/DESIRED_CAPS");
    let bpftool = |args: &[&str]| {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bpftool(&[
        "map",
        "create",
        map.to_str().unwrap(),
        "type",
        "hash",
        "key",
        "32",
        "value",
        "64",
        "entries",
        "8192",
        "name",
        "DESIRED_CAPS",
    ]);
    let id: Vec<String> = (0..32)
        .map(|i| {
            u8::from_str_radix(&c.id[2 * i..2 * i + 2], 16)
                .unwrap()
                .to_string()
        })
        .collect();
    // egress 20 Mbit/s, no ingress, burst 128 KiB, owner, no flags (little endian).
    let mut value: Vec<String> = Vec::new();
    for word in [CAP, 0, 131_072] {
        value.extend(word.to_le_bytes().iter().map(ToString::to_string));
    }
    value.extend(id.iter().cloned());
    value.extend(std::iter::repeat_n("0".to_owned(), 8));
    let mut args = vec!["map", "update", "pinned", map.to_str().unwrap(), "key"];
    args.extend(id.iter().map(String::as_str));
    args.push("value");
    args.extend(value.iter().map(String::as_str));
    bpftool(&args);
    for marker in list(Path::new(PINS))
        .iter()
        .filter(|n| n.starts_with("build-"))
    {
        std::fs::remove_dir(Path::new(PINS).join(marker)).unwrap();
    }
    std::fs::create_dir(Path::new(PINS).join("build-0000000000000000")).unwrap();

    let out = dockops(&["stats", "--format", "json"]);
    assert!(out.status.success());
    assert!(!map.exists(), "DESIRED_CAPS is still pinned");
    let state = std::fs::read_to_string(STATE).expect("state file");
    assert!(state.contains(&c.id), "caps not carried over: {state}");
    assert_eq!(field(&stats_json(), &c.name, "/limits/egress_bps"), CAP);
    dockops_ok(&["reset", "--all"]);
}

#[test]
fn upgrade_stops_a_watch_of_the_old_build() {
    dockops_ok(&["reset", "--all"]);
    let c = Container::start("upg-watch", "sleep 600");
    let mut watch = Background::start(&["watch", "--format", "json", "--interval", "200ms"]);
    wait_for(Duration::from_secs(20), "watch to attach", || {
        list(&c.pin_dir()).len() == 2
    });
    variant("variant-code", &["stats"]);
    // Its programs and maps are no longer the attached ones: it must not carry on with them.
    wait_for(Duration::from_secs(10), "the old watch to exit", || {
        watch.exited().is_some()
    });
    assert_eq!(watch.exited().and_then(|s| s.code()), Some(1));
    dockops_ok(&["stats"]);
    assert_eq!(list(&c.pin_dir()).len(), 2);
}

/// Backlogs an earlier build laid out (one class under `htb d0c8:`) are set again by the
/// new build's first reconcile, in the container and on the host veth.
#[test]
fn upgrade_lays_the_backlogs_out_anew() {
    dockops_ok(&["reset", "--all"]);
    let c = Container::start("upg-backlog", "sleep 600");
    dockops_ok(&[
        "limit",
        &c.name,
        "--egress",
        "20mbit",
        "--ingress",
        "20mbit",
    ]);
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &c.id]);
    let (_, veth) = c.host_veth();
    let old = ["root", "handle", "d0c8:", "htb", "default", "1"];
    let mut inside = vec!["qdisc", "replace", "dev", "eth0"];
    inside.extend(old);
    tc_in(&pid, &["qdisc", "del", "dev", "eth0", "root"]);
    tc_in(&pid, &inside);
    let mut host = vec!["qdisc", "replace", "dev", veth.as_str()];
    host.extend(old);
    tc(&["qdisc", "del", "dev", &veth, "root"]);
    tc(&host);
    let roots = || {
        (
            tc_in(&pid, &["qdisc", "show", "dev", "eth0", "root"]),
            tc(&["qdisc", "show", "dev", &veth, "root"]),
        )
    };
    let (inside, host) = roots();
    assert!(
        inside.contains("htb d0c8:") && host.contains("htb d0c8:"),
        "the old layout was not set up: {inside} / {host}"
    );
    variant("variant-code", &["stats"]);
    let (inside, host) = roots();
    assert!(inside.contains("htb d0ca:"), "in the container: {inside}");
    assert!(host.contains("htb d0ca:"), "on {veth}: {host}");
    dockops_ok(&["stats"]);
    dockops_ok(&["unlimit", &c.name]);
}

/// A keep-alive connection paced under a cap, idle while an upgrade rebuilds
/// `PACED_SOCKETS` (`variant-layout`) and lifts the cap: the new build has no entry for its
/// socket, and still takes its pacing away at its next packet (an older one kept pacing such
/// sockets at their old share for good).
#[test]
fn a_connection_idle_across_an_upgrade_loses_its_pacing_with_the_cap() {
    const OBJECT: usize = 4 << 20;
    dockops_ok(&["reset", "--all"]);
    let web = Container::start(
        "upg-idle",
        &format!("mkdir -p /www && head -c {OBJECT} /dev/zero > /www/object && exec nginx"),
    );
    let address = (web.ip(), 80);
    wait_for(Duration::from_secs(10), "nginx", || {
        TcpStream::connect(address.clone()).is_ok()
    });
    dockops_ok(&["limit", &web.name, "--egress", "20mbit"]);
    let mut conn = BufReader::new(TcpStream::connect(address).expect("connecting to nginx"));
    // 4 MiB at 20 Mbit/s: 1.7 s.
    let capped = fetch(&mut conn, OBJECT);
    variant("variant-layout", &["unlimit", &web.name]);
    let lifted = fetch(&mut conn, OBJECT);
    assert!(
        capped > Duration::from_millis(1200) && lifted < capped / 4,
        "capped: {capped:?}, then with the cap lifted: {lifted:?}"
    );
    dockops_ok(&["stats"]);
}

/// A build whose pacing program the kernel refuses (`variant-unverifiable`) cannot take over:
/// each run fails with the kernel's reason before any pin changes, and the attached build's
/// programs go on holding the cap. (Before, the first run swapped the tc programs in, left the
/// older pacing program attached, moved the build marker, and blamed cgroup v2.)
#[test]
fn a_build_whose_programs_the_kernel_refuses_leaves_the_attached_one_in_place() {
    dockops_ok(&["reset", "--all"]);
    let pair = Pair::start("refused");
    dockops_ok(&["limit", &pair.client.name, "--egress", "20mbit"]);
    let links = link_ids(&pair.client);
    let programs = link_programs(&pair.client);
    let pinned = pinned_programs();
    let (per_second, _) = pair.iperf_while(9, false, || {
        thread::sleep(Duration::from_secs(2));
        for _ in 0..2 {
            let out = dockops_variant_cmd("variant-unverifiable")
                .args(["limit", &pair.client.name, "--egress", "10mbit"])
                .output()
                .expect("running variant-unverifiable");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "the refused build capped: {stderr}");
            assert!(
                stderr.contains("do not load on this kernel")
                    && stderr.contains("sock_pace")
                    && stderr.contains("invalid bpf_context access")
                    && !stderr.contains("cgroup v2"),
                "{stderr}"
            );
            thread::sleep(Duration::from_secs(2));
        }
    });
    assert_capped(&per_second, "egress while a refused build ran twice");
    assert_eq!(link_ids(&pair.client), links, "links were re-created");
    assert_eq!(link_programs(&pair.client), programs, "tc programs swapped");
    assert_eq!(pinned_programs(), pinned, "pins changed");
    assert!(!Path::new(PINS).join("probe").exists(), "scratch pins left");
    let stats = stats_json();
    assert_eq!(field(&stats, &pair.client.name, "/limits/egress_bps"), CAP);
}

/// Each pinned program and link of the datapath, with the program it runs.
fn pinned_programs() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (dir, kind) in [("progs", "prog"), ("global", "link")] {
        let dir = Path::new(PINS).join(dir);
        for name in list(&dir) {
            let path = dir.join(&name);
            let v = bpftool_json(&[kind, "show", "pinned", path.to_str().expect("utf-8")]);
            let id = if kind == "prog" {
                &v["id"]
            } else {
                &v["prog_id"]
            };
            out.push((format!("{kind} {name}"), id.as_u64().expect("program id")));
        }
    }
    out.sort();
    out
}

/// GETs `/object` (`size` bytes) over a keep-alive connection; returns how long it took.
fn fetch(conn: &mut BufReader<TcpStream>, size: usize) -> Duration {
    let start = Instant::now();
    conn.get_mut()
        .write_all(b"GET /object HTTP/1.1\r\nHost: web\r\n\r\n")
        .expect("request");
    let mut length = None;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).expect("response header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    assert_eq!(length, Some(size), "the object's length");
    let mut body = vec![0; size];
    conn.read_exact(&mut body).expect("response body");
    start.elapsed()
}

//! Bandwidth caps against real TCP: iperf3 between two test containers (run inside them with
//! `docker exec`, so the traffic is theirs), goodput compared with the cap.

use std::{process::Command, thread, time::Duration};

use dockops_integration::{
    Container, Ipv6Network, Pair, counter, docker, dockops, dockops_ok, field, fq_works,
    stats_json, tc, tc_in,
};
use serde_json::Value;

const CAP: u64 = 50_000_000;

#[expect(clippy::cast_precision_loss, reason = "ratios")]
fn ratio(goodput: f64, cap: u64) -> f64 {
    goodput / cap as f64
}

#[test]
fn egress_cap_holds_for_one_and_four_flows_and_unlimit_lifts_it() {
    let pair = Pair::start("egress");
    let out = dockops_ok(&["limit", &pair.client.name, "--egress", "50mbit"]);
    assert!(out.contains("egress 50 Mbit/s"), "{out}");
    for flows in ["1", "4"] {
        let r = ratio(pair.iperf(&["-t", "4", "-P", flows]), CAP);
        assert!(
            (0.8..=1.05).contains(&r),
            "{flows} flow(s): goodput/cap = {r:.3}"
        );
    }
    let stats = stats_json();
    assert_eq!(field(&stats, &pair.client.name, "/limits/egress_bps"), CAP);
    assert_eq!(
        field(&stats, &pair.client.name, "/limits/mode"),
        Value::from("paced")
    );
    assert_eq!(
        field(&stats, &pair.client.name, "/limits/ingress_bps"),
        Value::Null
    );
    assert_eq!(
        field(&stats, &pair.server.name, "/limits/egress_bps"),
        Value::Null
    );

    // The pacing program counted the capped address's sockets (egress: direction bit 0).
    let window = window_key(&pair.client.ip());
    assert!(dump("WINDOWS").contains(&window), "no WINDOWS entry");

    dockops_ok(&["unlimit", &pair.client.name]);
    let r = ratio(pair.iperf(&["-t", "2"]), CAP);
    assert!(r > 5.0, "after unlimit goodput is only {r:.2}× the old cap");
    dockops_ok(&["stats"]);
    assert!(
        !dump("WINDOWS").contains(&window),
        "the WINDOWS entry outlived the cap"
    );
    assert_eq!(
        field(&stats_json(), &pair.client.name, "/limits/egress_bps"),
        Value::Null
    );
}

#[test]
fn ingress_cap_paces_the_sender_even_a_server_on_an_ipv6_socket() {
    let pair = Pair::start("ingress");
    dockops_ok(&["limit", &pair.client.name, "--ingress", "50mbit"]);
    // -R: the server sends; iperf3 listens on the IPv6 wildcard (v4-mapped sockets).
    for flows in ["1", "4"] {
        let r = ratio(pair.iperf(&["-t", "4", "-R", "-P", flows]), CAP);
        assert!(
            (0.7..=1.05).contains(&r),
            "{flows} flow(s) into the container: goodput/cap = {r:.3}"
        );
    }
    // Its own uploads are not capped.
    let r = ratio(pair.iperf(&["-t", "2"]), CAP);
    assert!(r > 5.0, "egress got capped too: {r:.2}× the ingress cap");
}

#[test]
fn the_tc_cap_alone_steers_an_ecn_sender_with_marks() {
    // As a sender beyond the host: no pacing, ECN on, cubic (NET_ADMIN lets iperf3 pick it;
    // only reno and bbr are allowed in containers here).
    let options = ["--cap-add", "NET_ADMIN", "--sysctl", "net.ipv4.tcp_ecn=1"];
    let pair = Pair {
        server: Container::start_with("policed-srv", &options, "iperf3 -s"),
        client: Container::start_with("policed-cli", &options, "sleep 600"),
    };
    dockops_ok(&[
        "limit",
        &pair.client.name,
        "--ingress",
        "50mbit",
        "--no-pacing",
    ]);
    let r = ratio(pair.iperf(&["-t", "4", "-R", "-C", "cubic"]), CAP);
    assert!(
        (0.8..=1.05).contains(&r),
        "ECN cubic through the tc cap alone: goodput/cap = {r:.3}"
    );
    let stats = stats_json();
    assert_eq!(
        field(&stats, &pair.client.name, "/limits/mode"),
        Value::from("policed")
    );
    let marked = counter(&stats, &pair.client.name, "rx_marked_total");
    assert!(marked > 0, "no packet marked CE");
    assert_eq!(counter(&stats, &pair.server.name, "rx_marked_total"), 0);
}

#[test]
fn queue_mode_holds_ingress_with_htb_and_leaves_foreign_qdiscs_alone() {
    let pair = Pair::start("queued");
    let (_, veth) = pair.client.host_veth();
    dockops_ok(&[
        "limit",
        &pair.client.name,
        "--ingress",
        "50mbit",
        "--queue",
        "--no-pacing",
    ]);
    let qdiscs = tc(&["qdisc", "show", "dev", &veth]);
    assert!(qdiscs.contains("htb d0c5: root"), "{qdiscs}");
    assert!(
        tc(&["class", "show", "dev", &veth]).contains("rate 50Mbit ceil 50Mbit"),
        "{}",
        tc(&["class", "show", "dev", &veth])
    );
    // The queue counts wire bytes, as tc does: goodput a little under the cap.
    let r = ratio(pair.iperf(&["-t", "4", "-R"]), CAP);
    assert!((0.8..=1.05).contains(&r), "queued: goodput/cap = {r:.3}");
    assert_eq!(
        field(&stats_json(), &pair.client.name, "/limits/mode"),
        Value::from("queued")
    );
    dockops_ok(&["unlimit", &pair.client.name]);
    assert!(
        !tc(&["qdisc", "show", "dev", &veth]).contains("htb"),
        "unlimit left the queue"
    );

    // Someone else's root qdisc: refused (exit 2), left as it was, caps unchanged.
    let status = Command::new("tc")
        .args([
            "qdisc", "add", "dev", &veth, "root", "tbf", "rate", "10mbit",
        ])
        .args(["burst", "32kb", "latency", "25ms"])
        .status()
        .expect("tc");
    assert!(status.success());
    let out = dockops(&["limit", &pair.client.name, "--ingress", "50mbit", "--queue"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(tbf)"));
    assert!(tc(&["qdisc", "show", "dev", &veth]).contains("tbf"));
    assert_eq!(
        field(&stats_json(), &pair.client.name, "/limits/ingress_bps"),
        Value::Null
    );
}

#[test]
fn edt_mode_holds_ingress_with_fq_where_the_kernel_has_it() {
    const EDT_CAP: u64 = 10_000_000;
    let pair = Pair::start("edt");
    let (_, veth) = pair.client.host_veth();
    // Pacing off: the schedule alone holds the rate.
    let args = [
        "limit",
        &pair.client.name,
        "--ingress",
        "10mbit",
        "--edt",
        "--no-pacing",
    ];
    if !fq_works() {
        // This host (6.18 without sch_fq): refused, and nothing changes.
        let out = dockops(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("sch_fq"), "{stderr}");
        assert_eq!(
            field(&stats_json(), &pair.client.name, "/limits/ingress_bps"),
            Value::Null
        );
        assert!(!tc(&["qdisc", "show", "dev", &veth]).contains("fq"));
        return;
    }
    dockops_ok(&args);
    let qdiscs = tc(&["qdisc", "show", "dev", &veth]);
    assert!(qdiscs.contains("qdisc fq d0c7: root"), "{qdiscs}");
    assert_eq!(
        field(&stats_json(), &pair.client.name, "/limits/mode"),
        Value::from("edt")
    );
    let net = |name: &str| counter(&stats_json(), &pair.client.name, name);
    let (packets, dropped) = (net("rx_packets_total"), net("rx_dropped_total"));
    // The schedule counts wire bytes: goodput a little under the cap.
    let r = ratio(pair.iperf(&["-t", "4", "-R"]), EDT_CAP);
    assert!((0.85..=1.05).contains(&r), "EDT: goodput/cap = {r:.3}");
    // Packets wait in fq instead of being dropped: only what would wait beyond the horizon
    // (200 ms at the cap) is, as a loss-based sender without ECN fills any queue: 2–5 % in
    // the guest, as tbf (4 %), where the token bucket alone drops ~19 % at 10 Mbit/s
    // (docs/BENCHMARKS.md).
    let packets = net("rx_packets_total") - packets;
    let dropped = net("rx_dropped_total") - dropped;
    assert!(
        dropped * 100 <= packets * 10,
        "EDT dropped {dropped} of {packets} packets"
    );
    dockops_ok(&["unlimit", &pair.client.name]);
    assert!(
        !tc(&["qdisc", "show", "dev", &veth]).contains("d0c7"),
        "unlimit left the fq qdisc"
    );
}

#[test]
fn labels_cap_their_container_and_limit_overrides_them() {
    let pair = Pair::start_with(
        "labelled",
        &[
            "--label",
            "dockops.egress=20mbit",
            "--label",
            "dockops.colour=blue",
        ],
    );
    let egress = || field(&stats_json(), &pair.client.name, "/limits/egress_bps");
    assert_eq!(
        egress(),
        20_000_000,
        "the label's cap, applied by the refresh"
    );
    assert_eq!(
        field(&stats_json(), &pair.server.name, "/limits/egress_bps"),
        Value::Null,
        "the label caps only its own container"
    );
    let r = ratio(pair.iperf(&["-t", "3"]), 20_000_000);
    assert!((0.8..=1.05).contains(&r), "label cap: goodput/cap = {r:.3}");
    let show: Value = serde_json::from_str(&dockops_ok(&[
        "show",
        &pair.client.name,
        "--format",
        "json",
    ]))
    .expect("show JSON");
    let source = show["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["limit"] == "egress-bps")
        .map(|r| r["source"].clone());
    assert_eq!(source, Some(Value::from("label")), "{show}");
    assert!(
        show["label_errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("dockops.colour")),
        "{show}"
    );
    let notes = field(&stats_json(), &pair.client.name, "/notes");
    assert!(
        notes.to_string().contains("refused label dockops.colour"),
        "{notes}"
    );

    // CLI over label; unlimit takes the CLI's away, and the label's cap is back.
    dockops_ok(&["limit", &pair.client.name, "--egress", "40mbit"]);
    assert_eq!(egress(), 40_000_000);
    let out = dockops_ok(&["unlimit", &pair.client.name]);
    assert!(out.contains("labels cap it again"), "{out}");
    assert_eq!(egress(), 20_000_000);
}

#[test]
fn ipv6_senders_are_paced_too() {
    let net = Ipv6Network::create("dockops-it-v6", "fd00:d0c5::/64");
    let options = ["--network", net.0];
    let pair = Pair {
        server: Container::start_with("v6-srv", &options, "iperf3 -s"),
        client: Container::start_with("v6-cli", &options, "sleep 600"),
    };
    let server6 = pair.server.ipv6();
    assert!(server6.starts_with("fd00:d0c5::"), "{server6:?}");
    dockops_ok(&[
        "limit",
        &pair.client.name,
        "--egress",
        "50mbit",
        "--ingress",
        "50mbit",
    ]);
    for reverse in [false, true] {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &pair.client.id, "iperf3", "-6", "-c", &server6])
            .args(["-J", "-t", "3"]);
        if reverse {
            cmd.arg("-R");
        }
        let v: Value =
            serde_json::from_slice(&cmd.output().expect("iperf3").stdout).expect("iperf3 JSON");
        let r = ratio(
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .expect("goodput"),
            CAP,
        );
        let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        // Unpaced, the tc bucket alone held this at the cap with thousands of retransmits.
        assert!(
            (0.8..=1.05).contains(&r) && retransmits < 100,
            "IPv6, reverse {reverse}: goodput/cap = {r:.3}, {retransmits} retransmits"
        );
    }
}

#[test]
fn relimiting_live_takes_effect_within_two_seconds() {
    let pair = Pair::start("relimit");
    dockops_ok(&["limit", &pair.client.name, "--egress", "50mbit"]);
    let ip = pair.server.ip();
    let id = pair.client.id.clone();
    let run = thread::spawn(move || {
        Command::new("docker")
            .args(["exec", &id, "iperf3", "-c", &ip, "-J", "-t", "6", "-i", "1"])
            .output()
            .expect("iperf3")
    });
    thread::sleep(Duration::from_secs(2));
    dockops_ok(&["limit", &pair.client.name, "--egress", "20mbit"]);
    let out = run.join().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let per_second: Vec<f64> = v["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
        .collect();
    assert!(per_second.len() >= 6, "{per_second:?}");
    // Seconds 0-1 at the old cap; from second 4 on (2 s after the change) at the new one.
    assert!(
        (0.8..=1.1).contains(&ratio(per_second[1], CAP)),
        "before: {per_second:?}"
    );
    for &bps in &per_second[4..] {
        assert!(
            (0.7..=1.15).contains(&ratio(bps, 20_000_000)),
            "after re-limiting: {per_second:?}"
        );
    }
}

#[test]
fn bad_limits_exit_2_and_change_nothing() {
    let c = Container::start("badlimit", "sleep 600");
    for (args, needle) in [
        (vec!["--egress", "0"], "\"0\""),
        (vec!["--egress", "10xbit"], "\"10xbit\""),
        (vec!["--ingress=-5mbit"], "\"-5mbit\""),
        (vec!["--egress", "40gbit"], "\"40gbit\""),
        (vec!["--egress", "1mbit", "--burst", "1000b"], "\"1000b\""),
        // 1 Gbit/s refills 500 000 bytes in one 4 ms tick (HZ=250 here).
        (vec!["--egress", "1gbit", "--burst", "64kb"], "65536 B"),
        // A 64 KiB GSO aggregate could never pass a 32 KiB bucket.
        (vec!["--egress", "1mbit", "--burst", "32kb"], "gso_max_size"),
        (vec![], "--egress"),
    ] {
        let mut full = vec!["limit", c.name.as_str()];
        full.extend(args.iter().copied());
        let out = dockops(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {err}");
        assert!(err.contains(needle), "{full:?}: {err}");
    }
    let out = dockops(&["limit", "nosuchcontainer", "--egress", "1mbit"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuchcontainer"));
    let stats = stats_json();
    assert_eq!(
        field(&stats, &c.name, "/limits/egress_bps"),
        Value::Null,
        "a rejected limit changed the caps"
    );
    assert_eq!(field(&stats, &c.name, "/limits/ingress_bps"), Value::Null);
}

#[test]
fn caps_of_a_removed_container_are_dropped() {
    let c = Container::start("capgone", "sleep 600");
    dockops_ok(&[
        "limit",
        &c.name,
        "--egress",
        "10mbit",
        "--ingress",
        "20mbit",
    ]);
    let ip = c.ip();
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    let key = bpftool_key(&octets);
    let state = || std::fs::read_to_string("/var/lib/dockops/state.json").unwrap_or_default();
    assert!(dump("CAPS").contains(&key), "no CAPS entry for {ip}");
    assert!(state().contains(&c.id), "caps not recorded: {}", state());
    c.remove();
    dockops_ok(&["stats"]);
    assert!(
        !dump("CAPS").contains(&key),
        "CAPS entry for {ip} outlived its container: {}",
        dump("CAPS")
    );
    assert!(
        !state().contains(&c.id),
        "recorded caps outlived the container: {}",
        state()
    );
}

/// A pinned map's entries as `bpftool --json map dump` prints them.
fn dump(map: &str) -> String {
    let out = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(format!("/sys/fs/bpf/dockops/maps/{map}"))
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `WINDOWS` key of an IPv4 address's egress cap, as bpftool spells it: the address in
/// network byte order read as a native u32, shifted past the direction bit.
fn window_key(ip: &str) -> String {
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    let v4 = u32::from_ne_bytes([octets[0], octets[1], octets[2], octets[3]]);
    bpftool_key(&(u64::from(v4) << 1).to_ne_bytes())
}

/// A key as bpftool's JSON spells it: `"0x0a","0x00",...`.
fn bpftool_key(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("\"0x{b:02x}\"")).collect();
    hex.join(",")
}

#[test]
fn caps_follow_a_restarted_container_to_its_new_address() {
    let pair = Pair::start("restart");
    dockops_ok(&["limit", &pair.client.name, "--egress", "50mbit"]);
    let before = pair.client.ip();
    docker(&["stop", "-t", "0", &pair.client.id]);
    // A reconcile while it is stopped, and a newcomer that may take its address.
    dockops_ok(&["stats"]);
    let squatter = Container::start("restart-squat", "sleep 600");
    docker(&["start", &pair.client.id]);
    let stats = stats_json();
    assert_eq!(
        field(&stats, &pair.client.name, "/limits/egress_bps"),
        CAP,
        "caps lost over a restart ({before} → {})",
        pair.client.ip()
    );
    assert_eq!(
        field(&stats, &squatter.name, "/limits/egress_bps"),
        Value::Null
    );
    let r = ratio(pair.iperf(&["-t", "3"]), CAP);
    assert!(
        (0.8..=1.05).contains(&r),
        "after the restart: goodput/cap = {r:.3}"
    );
}

/// A 20 Mbit/s cap flooded at 80: slow enough for the emulated guest of `cargo xtask
/// vm-test` to send it all, and for the receiving socket not to drop.
const UDP_CAP: u64 = 20_000_000;

#[test]
fn udp_flood_is_held_by_the_hard_cap_and_its_drops_counted() {
    let pair = Pair::start("udp");
    let dropped = || {
        field(
            &stats_json(),
            &pair.client.name,
            "/network/tx_dropped_total",
        )
        .as_u64()
        .unwrap()
    };
    // No cap, no drops, however hard it sends.
    dockops_ok(&["stats"]);
    let free = ratio(pair.iperf(&["-u", "-b", "80M", "-t", "2"]), UDP_CAP);
    // Above 2×: the emulated guest of a slow host sent 2.53× once.
    assert!(free > 2.0, "uncapped UDP reached only {free:.2}× 20 Mbit/s");
    assert_eq!(dropped(), 0, "drops without a cap");
    // UDP is not paced: the egress backlog in the container holds it (wire bytes at 1.045×
    // the cap), and the sender waits for room in it rather than losing datagrams.
    dockops_ok(&["limit", &pair.client.name, "--egress", "20mbit"]);
    let held = ratio(pair.iperf(&["-u", "-b", "80M", "-t", "4"]), UDP_CAP);
    assert!(
        (0.8..=1.1).contains(&held),
        "UDP flood under a 20 Mbit/s cap: goodput/cap = {held:.3}"
    );
    // Beside a TCP flow, the flood keeps to the backlog's prompt class (guaranteed half the
    // rate, as is the paced sockets' bulk class): each gets about half the cap. (The two
    // runs start a moment apart, each alone with the whole cap meanwhile: their sum may
    // pass the cap, which the run above bounds.)
    pair.server.exec("iperf3 -s -D -p 5202");
    let (tcp, udp) = thread::scope(|scope| {
        let udp = scope.spawn(|| pair.iperf(&["-p", "5202", "-u", "-b", "80M", "-t", "4"]));
        let tcp = pair.iperf(&["-t", "4"]);
        (
            ratio(tcp, UDP_CAP),
            ratio(udp.join().expect("UDP client"), UDP_CAP),
        )
    });
    assert!(
        (0.3..=0.7).contains(&tcp) && (0.3..=0.7).contains(&udp),
        "TCP beside a UDP flood: TCP {tcp:.3}, UDP {udp:.3} of the cap"
    );
    // Without the backlog (a sender it cannot hold), the tc bucket holds the flood alone,
    // dropping and counting what is beyond the cap.
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &pair.client.id]);
    tc_in(&pid, &["qdisc", "del", "dev", "eth0", "root"]);
    let before = dropped();
    let held = ratio(pair.iperf(&["-u", "-b", "80M", "-t", "4"]), UDP_CAP);
    assert!(
        (0.8..=1.1).contains(&held),
        "UDP flood under the bucket alone: goodput/cap = {held:.3}"
    );
    let drops = dropped() - before;
    assert!(
        drops > 1000,
        "the cap dropped only {drops} packets of a 4× flood"
    );
    let bytes = field(
        &stats_json(),
        &pair.client.name,
        "/network/tx_dropped_bytes_total",
    )
    .as_u64()
    .unwrap();
    assert!(
        bytes > drops * 1000,
        "{bytes} bytes for {drops} dropped ~1.5 kB datagrams"
    );
}

#[test]
fn a_new_container_on_a_reused_address_does_not_inherit_caps() {
    let old = Container::start("reuse-old", "sleep 600");
    dockops_ok(&["limit", &old.name, "--egress", "10mbit"]);
    let ip = old.ip();
    // Removed while no dockops command runs to notice.
    old.remove();
    let new = Container::start("reuse-new", "sleep 600");
    assert_eq!(
        new.ip(),
        ip,
        "docker gave the freed address to the next container"
    );
    let stats = stats_json();
    assert_eq!(
        field(&stats, &new.name, "/limits/egress_bps"),
        Value::Null,
        "inherited the old container's cap"
    );
}

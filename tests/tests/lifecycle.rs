//! The persistent datapath: adoption, pick-up of new containers, cleanup, reset.

use std::{path::Path, time::Duration};

use dockops_integration::{
    Background, Container, PINS, all_link_ids, docker, dockops, dockops_ok, dockops_programs,
    link_ids, list, tc, tc_in, wait_for,
};

#[test]
fn second_stats_adopts_instead_of_attaching() {
    let c = Container::start("adopt", "sleep 600");
    dockops_ok(&["stats"]);
    let (ifindex, _) = c.host_veth();
    assert_eq!(
        list(&c.pin_dir()),
        [
            format!("{ifindex}-egress-tcx"),
            format!("{ifindex}-ingress-tcx")
        ]
    );
    let first = link_ids(&c);
    assert_eq!(first.len(), 2);
    dockops_ok(&["stats"]);
    assert_eq!(link_ids(&c), first, "a second stats attached again");
}

#[test]
fn removed_container_loses_its_pins_and_links() {
    let c = Container::start("removed", "sleep 600");
    dockops_ok(&["stats"]);
    let ids = link_ids(&c);
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| all_link_ids().contains(id)));
    c.remove();
    dockops_ok(&["stats"]);
    assert!(
        !c.pin_dir().exists(),
        "{} still exists",
        c.pin_dir().display()
    );
    let live = all_link_ids();
    assert!(
        ids.iter().all(|id| !live.contains(id)),
        "links {ids:?} still exist: {live:?}"
    );
}

#[test]
fn watch_picks_up_a_container_started_after_it() {
    let watch = Background::start(&["watch", "--format", "json", "--interval", "200ms"]);
    // The first tick shows that watch is up before the container exists.
    wait_for(Duration::from_secs(20), "watch to print", || {
        Path::new(PINS).join("progs").exists()
    });
    let c = Container::start("late", "sleep 600");
    wait_for(
        Duration::from_secs(20),
        "watch to list the late container",
        || watch.output().contains(&c.id),
    );
    wait_for(Duration::from_secs(5), "pins of the late container", || {
        list(&c.pin_dir()).len() == 2
    });
    // And drops it again once it is gone.
    c.remove();
    wait_for(
        Duration::from_secs(20),
        "watch to remove the container's pins",
        || !c.pin_dir().exists(),
    );
    let status = watch.terminate();
    assert!(status.success(), "watch exited with {status} on SIGTERM");
    assert!(
        Path::new(PINS).join("progs").exists(),
        "the pinned datapath outlives watch"
    );
}

#[test]
fn watch_follows_a_restart_to_the_new_veth() {
    let c = Container::start("restart", "sleep 600");
    let watch = Background::start(&["watch", "--format", "json", "--interval", "200ms"]);
    let (old, _) = c.host_veth();
    wait_for(Duration::from_secs(20), "pins on the first veth", || {
        list(&c.pin_dir())
            .iter()
            .filter(|p| p.starts_with(&format!("{old}-")))
            .count()
            == 2
    });
    dockops_integration::docker(&["restart", "-t", "0", &c.id]);
    let (new, _) = c.host_veth();
    assert_ne!(old, new, "a restarted container gets a new veth");
    wait_for(
        Duration::from_secs(20),
        "pins to move to the new veth",
        || list(&c.pin_dir()) == [format!("{new}-egress-tcx"), format!("{new}-ingress-tcx")],
    );
    drop(watch);
}

#[test]
fn reset_leaves_nothing_behind() {
    let c = Container::start("reset", "sleep 600");
    // An egress cap puts a backlog queue in the container's own namespace.
    dockops_ok(&["limit", &c.name, "--egress", "10mbit"]);
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &c.id]);
    let container_qdiscs = || tc_in(&pid, &["qdisc", "show"]);
    assert!(container_qdiscs().contains("htb d0ca:"), "no backlog");
    dockops_ok(&["stats"]);
    let pins = list(&c.pin_dir());
    assert_eq!(pins.len(), 2, "{pins:?}");
    // tcx links (>= 6.6), or records of netlink filters, which the tc checks below cover.
    let links = if pins.iter().any(|p| p.contains("-netlink")) {
        Vec::new()
    } else {
        link_ids(&c)
    };
    assert!(!dockops_programs().is_empty());
    let out = dockops_ok(&["reset"]);
    assert!(
        out.contains(&c.id),
        "reset did not report the container's links: {out}"
    );
    assert!(!Path::new(PINS).exists(), "{PINS} still exists");
    let live = all_link_ids();
    assert!(
        links.iter().all(|id| !live.contains(id)),
        "links {links:?} survived reset"
    );
    // Programs are freed when their last link goes; allow the kernel a moment.
    wait_for(
        Duration::from_secs(5),
        "every dockops program to be unloaded",
        || dockops_programs().is_empty(),
    );
    for dev in list(Path::new("/sys/class/net")) {
        for hook in ["ingress", "egress"] {
            let filters = tc(&["filter", "show", "dev", &dev, hook]);
            assert!(
                !filters.contains("_acct"),
                "{dev} {hook} still has {filters}"
            );
        }
        assert!(
            !tc(&["qdisc", "show", "dev", &dev]).contains("clsact"),
            "clsact left on {dev}"
        );
    }
    let left = container_qdiscs();
    assert!(
        !left.contains("d0ca:"),
        "the backlog survived reset: {left}"
    );
    assert!(
        out.contains("egress backlog"),
        "reset did not report the backlog: {out}"
    );
    let again = dockops_ok(&["reset"]);
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
fn netlink_mode_attaches_counts_and_cleans_up() {
    dockops_ok(&["reset"]);
    let server = Container::start("nl-server", "httpd -f -p 8080 -h /www");
    let client = Container::start("nl-client", "sleep 600");
    dockops_ok(&["--tc-attach", "netlink", "stats"]);
    let (ifindex, veth) = client.host_veth();
    let pins = list(&client.pin_dir());
    assert_eq!(pins.len(), 2, "{pins:?}");
    assert!(tc(&["qdisc", "show", "dev", &veth]).contains("clsact"));
    // Each record names its filter's priority and handle, as tc shows them.
    for (pin, kind, program) in [
        (&pins[0], "egress-netlink", "tc_egress_acct"),
        (&pins[1], "ingress-netlink-clsact", "tc_ingress_acct"),
    ] {
        let rest = pin
            .strip_prefix(&format!("{ifindex}-{kind}-p"))
            .unwrap_or_else(|| panic!("{pin} is not a {kind} record"));
        let (priority, handle) = rest.split_once("-h").expect("priority and handle");
        let handle: u32 = handle.parse().expect("handle");
        let filters = tc(&[
            "filter",
            "show",
            "dev",
            &veth,
            kind.split('-').next().unwrap(),
        ]);
        assert!(
            filters.contains(&format!(
                "pref {priority} bpf chain 0 handle {handle:#x} {program}"
            )),
            "{pin} does not match {filters}"
        );
    }

    client.exec(&format!(
        "wget -q -O /dev/null http://{}:8080/ || true",
        server.ip()
    ));
    let stats = dockops_integration::stats_json();
    assert!(dockops_integration::counter(&stats, &client.name, "tx_packets_total") > 0);
    assert!(dockops_integration::counter(&stats, &client.name, "rx_packets_total") > 0);

    // A removed container's filters go with its veth; a live one's are removed by reset.
    dockops_ok(&["reset"]);
    assert!(
        !tc(&["qdisc", "show", "dev", &veth]).contains("clsact"),
        "reset left the clsact qdisc"
    );
    assert!(tc(&["filter", "show", "dev", &veth, "ingress"]).is_empty());
    // tc frees a deleted filter's program after an RCU grace period, not synchronously.
    wait_for(
        Duration::from_secs(5),
        "the filters' programs to be freed",
        || dockops_programs().is_empty(),
    );
    drop(server);
    drop(client);
    assert!(dockops(&["reset"]).status.success());
}

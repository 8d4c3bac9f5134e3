//! What a user sees when something is wrong: a clear message and a non-zero exit.

use dockops_integration::{Container, dockops, dockops_cmd};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_container_is_named_and_exits_2() {
    let _c = Container::start("known", "sleep 600");
    let out = dockops(&["stats", "dockops-it-known", "nosuchcontainer"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"nosuchcontainer\""),
        "{}",
        stderr(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is printed for a failed request"
    );
}

#[test]
fn bad_intervals_are_rejected() {
    for interval in ["0", "x", "0s", "-1s"] {
        let out = dockops(&["watch", &format!("--interval={interval}")]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--interval {interval}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("--interval"), "{}", stderr(&out));
    }
}

#[test]
fn unreachable_engine_is_explained() {
    let out = dockops_cmd()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("stats")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{err}"
    );
}

#[test]
fn non_root_is_refused_before_touching_anything() {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::var("DOCKOPS_BIN").unwrap())
        .arg("stats")
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must run as root"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policy_check_names_bad_rules_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("dockops-it-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[[rule]]\nname = \"web-*\"\negress = \"50mbit\"\n\n\
         [[rule]]\ngroup = \"compose:shop\"\negress = \"100mbit\"\n",
    )
    .unwrap();
    let out = dockops(&["policy", "check", good.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout.contains("2 rule(s) in force (1 shared"), "{stdout}");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"db\"\nmemory = \"lots\"\n\n[[rule]]\nname = \"ok\"\ncpus = \"1\"\n",
    )
    .unwrap();
    let out = dockops(&["policy", "check", bad.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stdout.contains("rule 1: memory = \"lots\""), "{stdout}");
    assert!(
        stderr(&out).contains("1 rule(s) in force"),
        "{}",
        stderr(&out)
    );

    for (name, text) in [("broken.toml", "[[rule]"), ("missing.toml", "")] {
        let path = dir.join(name);
        if !text.is_empty() {
            std::fs::write(&path, text).unwrap();
        }
        let out = dockops(&["policy", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(name), "{}", stderr(&out));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

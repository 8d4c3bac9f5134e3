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

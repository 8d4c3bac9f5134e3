//! A Docker engine for running and testing, and the test image made without a registry.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::sh;

pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// busybox-static with its applets, iperf3, wrk and nginx, imported from a folder (no
/// registry is needed).
pub const TEST_IMAGE: &str = "dockops-test/busybox:latest";
/// Bumped when the image's contents change, so an older import is replaced.
const TEST_IMAGE_VERSION: &str = "3";

/// An engine that answers; a private one is stopped on drop.
pub struct Engine {
    pub host: String,
    private: Option<Private>,
}

/// A dockerd this run is responsible for stopping.
struct Private {
    pidfile: PathBuf,
    /// dockerd leaves mounts here (the default network namespace's bind mount).
    exec_root: PathBuf,
    /// A filesystem mounted for its data root, unmounted (and its image deleted) after it.
    loop_fs: Option<(PathBuf, PathBuf)>,
    /// Set when this run started it (to reap it); `None` when adopted from an interrupted run.
    child: Option<Child>,
}

impl Engine {
    /// The engine at `DOCKER_HOST` (default socket) if it answers. Otherwise, with `private_dir`,
    /// a private engine whose state and socket live there (stopped on drop); without it, a
    /// system-style engine on the default socket that keeps running.
    pub fn ensure(private_dir: Option<&Path>) -> anyhow::Result<Self> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_owned());
        if answers(&host) {
            eprintln!("docker: using the engine at {host}");
            return Ok(Self {
                host,
                private: None,
            });
        }
        if !sh::ok(Command::new("dockerd").arg("--version")) {
            bail!(
                "no Docker engine answers at {host} and dockerd is not installed (run `cargo xtask setup` as root)"
            );
        }
        if let Some(dir) = private_dir {
            return start_private(dir, &dir.join("data"), &[], false);
        }
        let log = crate::workspace().join("target/dockerd.log");
        fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
        let child = spawn_dockerd(&[], &log, false)?;
        eprintln!(
            "docker: no engine was running; started dockerd (pid {}, log {}). It keeps running.",
            child.id(),
            log.display()
        );
        wait_until_answers(DEFAULT_HOST)?;
        Ok(Self {
            host: DEFAULT_HOST.to_owned(),
            private: None,
        })
    }

    /// The pid file of an engine this run started or adopted (a test may restart it).
    pub fn pidfile(&self) -> Option<&Path> {
        self.private.as_ref().map(|p| p.pidfile.as_path())
    }

    /// `docker` talking to this engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.host);
        cmd
    }

    /// Removes (`rm -f`) every container labelled `label`; returns how many.
    pub fn remove_labelled(&self, label: &str) -> usize {
        let ids =
            sh::output(
                self.docker()
                    .args(["ps", "-aq", "--filter", &format!("label={label}")]),
            )
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = sh::ok(self.docker().args(["rm", "-f"]).args(&ids));
        }
        ids.len()
    }

    /// Imports [`TEST_IMAGE`] unless present.
    pub fn ensure_test_image(&self) -> anyhow::Result<()> {
        let version = sh::output(self.docker().args([
            "image",
            "inspect",
            "--format",
            "{{index .Config.Labels \"dockops.image.version\"}}",
            TEST_IMAGE,
        ]));
        if version.is_some_and(|v| v.trim() == TEST_IMAGE_VERSION) {
            return Ok(());
        }
        let root = crate::workspace().join("target/images/busybox");
        make_busybox_root(&root)?;
        eprintln!("docker: importing {TEST_IMAGE} from {}", root.display());
        let tar = Command::new("tar")
            .args(["-C"])
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("running tar")?;
        let status = self
            .docker()
            .args([
                "import",
                "--change",
                &format!("LABEL dockops.image.version={TEST_IMAGE_VERSION}"),
                "-",
                TEST_IMAGE,
            ])
            .stdin(tar.stdout.context("tar stdout")?)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("docker import failed: {status}");
        }
        Ok(())
    }
}

/// containerd's sockets live under the exec root; unix socket paths max out at 108 bytes.
fn exec_root(dir: &Path) -> String {
    let exec = dir.join("exec").display().to_string();
    if exec.len() <= 50 {
        exec
    } else {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        format!("/run/dockops-test-{name}")
    }
}

/// Lazily unmounts what is mounted under `root` (dockerd leaves `netns/default` behind,
/// which would make the folder impossible to delete).
fn unmount_under(root: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
        if Path::new(point).starts_with(root) {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
    }
}

impl Engine {
    /// A private dockerd with the btrfs storage driver, its data root on a btrfs filesystem
    /// of its own, in a 2 GiB sparse file under `dir`, loop-mounted (for storage limits). It runs in a network namespace
    /// of its own: a second dockerd in the host's would take over (or, with `--bridge
    /// none`, delete) the other engine's docker0 and rewrite iptables.
    pub fn private_btrfs(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let dir = fs::canonicalize(dir)?;
        let (image, mount) = (dir.join("fs.img"), dir.join("mnt"));
        let mounted = fs::read_to_string("/proc/self/mounts")?
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&*mount.to_string_lossy()));
        if !mounted {
            fs::File::create(&image)?.set_len(2 << 30)?;
            sh::run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&image))
                .context("mkfs.btrfs (btrfs-progs: run `cargo xtask setup`)")?;
            fs::create_dir_all(&mount)?;
            sh::run(
                Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&image)
                    .arg(&mount),
            )
            .context("loop-mounting the btrfs image")?;
        }
        let mut engine = start_private(
            &dir,
            &mount.join("data"),
            &["--storage-driver", "btrfs"],
            true,
        )?;
        if let Some(private) = &mut engine.private {
            private.loop_fs = Some((mount, image));
        }
        Ok(engine)
    }
}

/// A dockerd whose socket, pidfile and log live under `dir`, its state in `data`, with
/// `extra` options (in a new network namespace with `own_netns`); stopped on drop.
fn start_private(
    dir: &Path,
    data: &Path,
    extra: &[&str],
    own_netns: bool,
) -> anyhow::Result<Engine> {
    fs::create_dir_all(dir)?;
    let dir = fs::canonicalize(dir)?;
    let host = format!("unix://{}", dir.join("docker.sock").display());
    if answers(&host) {
        // Left running by an interrupted run: adopt it (and stop it at the end).
        eprintln!("docker: reusing the private dockerd at {host}");
        let private = Private {
            pidfile: dir.join("dockerd.pid"),
            exec_root: exec_root(&dir).into(),
            loop_fs: None,
            child: None,
        };
        return Ok(Engine {
            host,
            private: Some(private),
        });
    }
    let path = |name: &str| dir.join(name).display().to_string();
    let exec_root = exec_root(&dir);
    let mut args = vec![
        "--data-root".into(),
        data.display().to_string(),
        "--exec-root".into(),
        exec_root.clone(),
        "--pidfile".into(),
        path("dockerd.pid"),
        "-H".into(),
        host.clone(),
    ];
    args.extend(extra.iter().map(|&a| a.to_owned()));
    let child = spawn_dockerd(&args, &dir.join("dockerd.log"), own_netns)?;
    eprintln!(
        "docker: started a private dockerd at {host} (log: {})",
        path("dockerd.log")
    );
    let private = Private {
        pidfile: dir.join("dockerd.pid"),
        exec_root: exec_root.into(),
        loop_fs: None,
        child: Some(child),
    };
    let engine = Engine {
        host,
        private: Some(private),
    };
    wait_until_answers(&engine.host)?;
    Ok(engine)
}

impl Drop for Engine {
    fn drop(&mut self) {
        let Some(private) = &mut self.private else {
            return;
        };
        eprintln!("docker: stopping the private dockerd");
        // The one this run started, and the one the pid file names (a test restarted it).
        let mut pids: Vec<String> = private.child.iter().map(|c| c.id().to_string()).collect();
        if let Ok(text) = fs::read_to_string(&private.pidfile)
            && !pids.contains(&text.trim().to_owned())
        {
            pids.push(text.trim().to_owned());
        }
        for pid in &pids {
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut running = |pid: &String| match &mut private.child {
            Some(child) if child.id().to_string() == *pid => {
                !matches!(child.try_wait(), Ok(Some(_)))
            }
            _ => Path::new("/proc").join(pid).exists(),
        };
        while Instant::now() < deadline {
            pids.retain(&mut running);
            if pids.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        for pid in &pids {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        if let Some(child) = &mut private.child {
            let _ = child.wait();
        }
        unmount_under(&private.exec_root);
        // dockerd may leave its data root bind-mounted on itself (a restarted one did):
        // then the directory cannot be removed.
        if let Some(dir) = private.pidfile.parent() {
            unmount_under(&dir.join("data"));
        }
        if let Some((mount, image)) = &private.loop_fs {
            unmount_under(mount);
            let _ = fs::remove_file(image);
        }
    }
}

fn answers(host: &str) -> bool {
    sh::ok(Command::new("docker").env("DOCKER_HOST", host).args([
        "version",
        "--format",
        "{{.Server.Version}}",
    ]))
}

fn spawn_dockerd(args: &[String], log: &Path, own_netns: bool) -> anyhow::Result<Child> {
    let log = fs::File::create(log)?;
    // unshare execs dockerd: the child's pid is dockerd's.
    let mut cmd = if own_netns {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--", "dockerd"]);
        cmd
    } else {
        Command::new("dockerd")
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting dockerd")
}

fn wait_until_answers(host: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_mins(1);
    while Instant::now() < deadline {
        if answers(host) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(250));
    }
    bail!("dockerd did not answer at {host} within 60 s (see its log)")
}

/// The test image's root as a tar file, for `docker import` where this engine is not (the
/// vm-test guest).
pub fn busybox_tar(to: &Path) -> anyhow::Result<()> {
    let root = crate::workspace().join("target/images/busybox");
    make_busybox_root(&root)?;
    sh::run(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(to)
            .arg("."),
    )
}

/// A root folder with busybox and a symlink per applet.
fn make_busybox_root(root: &Path) -> anyhow::Result<()> {
    let busybox = PathBuf::from("/bin/busybox");
    let applets = sh::output(Command::new(&busybox).arg("--list"))
        .context("/bin/busybox is missing: install busybox-static")?;
    let _ = fs::remove_dir_all(root);
    let bin = root.join("bin");
    fs::create_dir_all(&bin)?;
    for dir in ["tmp", "www", "proc", "sys", "dev", "etc"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy(&busybox, bin.join("busybox"))?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    copy_with_libraries(Path::new("/usr/bin/iperf3"), root)?;
    copy_with_libraries(Path::new("/usr/bin/wrk"), root)?;
    let nginx = crate::setup::nginx_dir().join("usr/sbin/nginx");
    copy_with_libraries(&nginx, root)?;
    fs::create_dir_all(root.join("usr/sbin"))?;
    let copied = root.join(nginx.strip_prefix("/")?);
    fs::rename(&copied, root.join("usr/sbin/nginx"))?;
    // nginx opens its compiled-in error log before it reads the configuration.
    fs::create_dir_all(root.join("var/log/nginx"))?;
    fs::create_dir_all(root.join("etc/nginx"))?;
    fs::write(root.join("etc/nginx/nginx.conf"), NGINX_CONF)?;
    // nginx looks its user up.
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// `nginx` in the test image serves /www on port 80 (IPv4 and IPv6), keep-alive without a
/// request limit, for the HTTP shaping tests and benchmarks.
const NGINX_CONF: &str = "user root;
worker_processes auto;
pid /tmp/nginx.pid;
error_log stderr warn;
daemon off;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    server {
        listen 80;
        listen [::]:80;
        root /www;
    }
}
";

/// Copies a dynamically linked binary and the libraries `ldd` lists for it to the same paths
/// under `root` (the image has no package manager and no libc of its own).
fn copy_with_libraries(binary: &Path, root: &Path) -> anyhow::Result<()> {
    let ldd = sh::output(Command::new("ldd").arg(binary))
        .with_context(|| format!("{} is missing: run `cargo xtask setup`", binary.display()))?;
    let libraries = ldd.lines().filter_map(|line| {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last()?.split_whitespace().next()?;
        path.starts_with('/').then(|| PathBuf::from(path))
    });
    for file in std::iter::once(binary.to_path_buf()).chain(libraries) {
        let target = root.join(file.strip_prefix("/")?);
        fs::create_dir_all(target.parent().unwrap_or(root))?;
        fs::copy(&file, &target).with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}

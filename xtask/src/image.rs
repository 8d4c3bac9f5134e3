//! `cargo xtask image`: the agent as a Docker image, without a registry: the release binary
//! and the shared libraries it links (`ldd`), imported with `docker import`.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{docker::Engine, sh};

/// The image's name; tagged with the package version too.
pub const AGENT_IMAGE: &str = "dockops/agent:latest";

/// `cargo xtask image`: builds the binary and imports the image into the engine at
/// `DOCKER_HOST` (or the default socket; started if none answers).
pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build()?;
    let engine = Engine::ensure(None)?;
    import(&engine)?;
    println!("{AGENT_IMAGE}: run it as docs/OPERATIONS.md says (\"The agent as a container\")");
    Ok(())
}

/// Imports the agent image built from the current release binary into `engine`.
pub fn import(engine: &Engine) -> anyhow::Result<()> {
    let root = crate::workspace().join("target/images/agent");
    let _ = fs::remove_dir_all(&root);
    let binary = crate::binary();
    copy_into(&root, &binary, Path::new("/usr/local/bin/dockops-bpf"))?;
    for lib in libraries(&binary)? {
        copy_into(&root, Path::new(&lib), Path::new(&lib))?;
    }
    // Mount points, and where the state and the policy file live.
    for dir in [
        "proc",
        "sys",
        "run",
        "tmp",
        "var/lib/dockops",
        "etc/dockops",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let status = engine
        .docker()
        .args([
            "import",
            "--change",
            r#"ENTRYPOINT ["/usr/local/bin/dockops-bpf"]"#,
            "--change",
            r#"CMD ["watch", "--format", "none", "--metrics-addr", "127.0.0.1:9101"]"#,
            // Debian's /var/run is /run: the socket of a host's engine, with `-v /run:/run`.
            "--change",
            "ENV DOCKER_HOST=unix:///run/docker.sock",
            "--change",
            &format!("LABEL dockops.image.version={version}"),
            "-",
            AGENT_IMAGE,
        ])
        .stdin(tar.stdout.context("tar stdout")?)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("docker import of {AGENT_IMAGE} failed: {status}");
    }
    let versioned = AGENT_IMAGE.replace(":latest", &format!(":{version}"));
    sh::run(engine.docker().args(["tag", AGENT_IMAGE, &versioned]))?;
    eprintln!("image: imported {AGENT_IMAGE} ({versioned})");
    Ok(())
}

/// The shared libraries `binary` loads, as `ldd` resolves them (the loader included).
fn libraries(binary: &Path) -> anyhow::Result<Vec<String>> {
    let out = sh::output(Command::new("ldd").arg(binary)).context("ldd")?;
    Ok(out
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; linux-vdso has no file.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

/// Copies `from` to `to` under `root` (following symlinks: the file itself).
fn copy_into(root: &Path, from: &Path, to: &Path) -> anyhow::Result<()> {
    let target = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, &target).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

//! The guest `cargo xtask vm-test` boots: Debian bookworm's own kernel and a debootstrap'd
//! rootfs with docker.io, booted with cgroup v2 only. Built once into a cache outside
//! `target/` (a fresh clone on the same machine reuses it) and rebuilt when the recipe below
//! changes. Everything comes from the Debian archive.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{setup, sh, toolchain};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Debian's kernel, pinned by ABI name: the tier reports on this exact kernel.
pub const KERNEL: &str = "6.1.0-57-amd64";
/// What the guest's root holds besides a minimal base: the engine, the tools the
/// integration tests call (`ip`, `tc`, `bpftool`, `nsenter`, `curl`) and kmod for Docker's modules.
const GUEST_PACKAGES: &[&str] = &[
    "docker.io",
    "busybox-static",
    "iperf3",
    "bpftool",
    "iproute2",
    "kmod",
    "util-linux",
    "procps",
    "curl",
];
/// QEMU 7.2 unpacked, not installed (it conflicts with the newer qemu-utils some hosts
/// carry), with the libraries it needs beyond this host's base system.
const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
    "libcapstone4",
    "libfdt1",
    "libpmem1",
    "libndctl6",
    "libdaxctl1",
    "librdmacm1",
    "libibverbs1",
    "libnl-3-200",
    "libnl-route-3-200",
    "libslirp0",
    "libvdeplug2",
];
/// Host tools the build runs.
const HOST_PACKAGES: &[&str] = &["debootstrap", "cpio", "e2fsprogs"];
/// Modules the first stage loads to mount the root disk (Debian builds them as modules).
const INITRD_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"];
const INITRD_INIT: &str = include_str!("initrd-init");
const GUEST_INIT: &str = include_str!("guest-init");
const DISK_SIZE: &str = "6G";
/// What a build needs free in the cache: downloads, the unpacked root, the disk image.
const NEEDED_BYTES: u64 = 4 << 30;

/// A built guest: what QEMU needs to boot it.
pub struct Guest {
    dir: PathBuf,
}

impl Guest {
    pub fn qemu(&self) -> Command {
        let root = self.dir.join("qemu");
        let mut cmd = Command::new(root.join("usr/bin/qemu-system-x86_64"));
        cmd.env("LD_LIBRARY_PATH", library_path(&root));
        for firmware in ["usr/share/seabios", "usr/share/qemu", "usr/lib/ipxe/qemu"] {
            cmd.arg("-L").arg(root.join(firmware));
        }
        cmd
    }

    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.gz")
    }

    pub fn disk(&self) -> PathBuf {
        self.dir.join("rootfs.img")
    }
}

fn library_path(qemu_root: &Path) -> String {
    ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
        .map(|d| qemu_root.join(d).display().to_string())
        .join(":")
}

/// Everything that decides what the guest is; a change rebuilds it.
fn recipe() -> String {
    format!(
        "suite {SUITE}\nmirror {MIRROR}\nkernel {KERNEL}\nguest {}\nqemu {}\nmodules {}\n\
         disk {DISK_SIZE}\n--- initrd init\n{INITRD_INIT}\n--- guest init\n{GUEST_INIT}",
        GUEST_PACKAGES.join(" "),
        QEMU_PACKAGES.join(" "),
        INITRD_MODULES.join(" "),
    )
}

/// Where the guest is cached: beside the pinned toolchain, outside any clone.
fn cache() -> PathBuf {
    toolchain::home().join(".cache/dockops/vm")
}

/// The cached guest, built first if absent or built from another recipe.
pub fn ensure() -> anyhow::Result<Guest> {
    let dir = cache();
    let guest = Guest { dir: dir.clone() };
    let built = [guest.kernel(), guest.initrd(), guest.disk()]
        .iter()
        .all(|p| p.exists());
    if built && fs::read_to_string(dir.join("recipe")).ok() == Some(recipe()) {
        eprintln!("vm: guest cached in {}", dir.display());
        return Ok(guest);
    }
    if !sh::is_root() {
        bail!("building the test guest needs root (debootstrap, chroot): run as root");
    }
    setup::ensure_packages(HOST_PACKAGES)?;
    fs::create_dir_all(&dir)?;
    let free = free_bytes(&dir)?;
    if free < NEEDED_BYTES {
        bail!(
            "building the test guest needs {} GiB free in {}, and {} MiB are",
            NEEDED_BYTES >> 30,
            dir.display(),
            free >> 20
        );
    }
    eprintln!(
        "vm: building the guest in {} (about 2 minutes)",
        dir.display()
    );
    let _ = fs::remove_file(dir.join("recipe"));
    build(&dir).context("building the test guest")?;
    fs::write(dir.join("recipe"), recipe())?;
    Ok(guest)
}

fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = sh::output(Command::new("df").args(["--output=avail", "-B1"]).arg(dir))
        .with_context(|| format!("df {}", dir.display()))?;
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {}: unexpected output {out:?}", dir.display()))
}

fn build(dir: &Path) -> anyhow::Result<()> {
    let work = dir.join("build");
    let _ = fs::remove_dir_all(&work);
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    let kernel_package = format!("linux-image-{KERNEL}");
    let packages: Vec<&str> = QEMU_PACKAGES
        .iter()
        .copied()
        .chain([kernel_package.as_str()])
        .collect();
    download(&debs, &packages)?;
    let qemu = dir.join("qemu");
    let _ = fs::remove_dir_all(&qemu);
    let kernel = work.join("kernel");
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        let is_kernel = deb
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&kernel_package));
        sh::run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(if is_kernel { &kernel } else { &qemu }),
        )?;
    }
    check_qemu_runs(&qemu)?;
    let rootfs = work.join("rootfs");
    sh::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(GUEST_PACKAGES.join(","))
            .arg(SUITE)
            .arg(&rootfs)
            .arg(MIRROR)
            .stdout(Stdio::null()),
    )?;
    // Into usr/lib: unpacking the package over the root would replace its /lib symlink.
    let modules = rootfs.join("usr/lib/modules");
    fs::create_dir_all(&modules)?;
    sh::run(
        Command::new("cp")
            .arg("-a")
            .arg(kernel.join("lib/modules").join(KERNEL))
            .arg(&modules),
    )?;
    sh::run(
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/usr/sbin/depmod", KERNEL]),
    )?;
    fs::copy(
        kernel.join("boot").join(format!("vmlinuz-{KERNEL}")),
        dir.join("vmlinuz"),
    )?;
    install_script(&rootfs.join("usr/local/sbin/dockops-vm-init"), GUEST_INIT)?;
    for entry in fs::read_dir(rootfs.join("var/cache/apt/archives"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            fs::remove_file(path)?;
        }
    }
    initrd(&rootfs, &work.join("initrd"), &dir.join("initrd.gz"))?;
    sh::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "dockops-vm", "-d"])
            .arg(&rootfs)
            .arg(dir.join("rootfs.img"))
            .arg(DISK_SIZE),
    )?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

/// `apt-get download`, after refreshing the package lists if the first try fails.
fn download(into: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let cmd = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-qq"])
            .args(packages)
            .current_dir(into);
        cmd
    };
    if sh::run(&mut cmd()).is_ok() {
        return Ok(());
    }
    sh::run(Command::new("apt-get").args(["update", "-qq"]))?;
    sh::run(&mut cmd())
}

/// Fails, naming the libraries, when the unpacked QEMU cannot start on this host.
fn check_qemu_runs(qemu: &Path) -> anyhow::Result<()> {
    let binary = qemu.join("usr/bin/qemu-system-x86_64");
    let ldd = sh::output(
        Command::new("ldd")
            .arg(&binary)
            .env("LD_LIBRARY_PATH", library_path(qemu)),
    )
    .with_context(|| format!("ldd {}", binary.display()))?;
    let missing: Vec<&str> = ldd
        .lines()
        .filter(|l| l.contains("not found"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if !missing.is_empty() {
        bail!(
            "QEMU needs libraries this host lacks: {} (add their packages to QEMU_PACKAGES \
             in xtask/src/vm/image.rs)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Writes an executable script, with its directory.
pub fn install_script(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(path.parent().unwrap_or(path))?;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The first stage: busybox, the root disk's modules in load order, and `init`.
fn initrd(rootfs: &Path, work: &Path, out: &Path) -> anyhow::Result<()> {
    for dir in ["bin", "modules", "newroot", "dev", "proc"] {
        fs::create_dir_all(work.join(dir))?;
    }
    fs::copy(rootfs.join("usr/bin/busybox"), work.join("bin/busybox"))?;
    install_script(&work.join("init"), INITRD_INIT)?;
    let mut order: Vec<String> = Vec::new();
    for module in INITRD_MODULES {
        let deps = sh::output(Command::new("chroot").arg(rootfs).args([
            "/usr/sbin/modprobe",
            "-S",
            KERNEL,
            "--show-depends",
            module,
        ]))
        .with_context(|| format!("modprobe --show-depends {module} in the guest root"))?;
        for line in deps.lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = path.trim().to_owned();
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    for (i, path) in order.iter().enumerate() {
        let name = Path::new(path).file_name().context("module path")?;
        let to = work
            .join("modules")
            .join(format!("{i:02}-{}", name.to_string_lossy()));
        fs::copy(rootfs.join(path.trim_start_matches('/')), to)
            .with_context(|| format!("copying module {path}"))?;
    }
    let archive = fs::File::create(out)?;
    sh::run(
        Command::new("sh")
            .args(["-c", "find . | cpio -o -H newc --quiet | gzip -1"])
            .current_dir(work)
            .stdout(archive),
    )
}

//! Where a container's cgroups are, from `/proc/<pid>/cgroup` of its init process.
//!
//! Reading the process's own record works for both cgroup drivers (`/docker/<id>` with
//! cgroupfs, `/system.slice/docker-<id>.scope` with systemd) and for v1, hybrid and v2 hosts.

use std::{collections::BTreeMap, fs, io, os::unix::fs::MetadataExt as _, path::Path};

/// Paths relative to each hierarchy's mount point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// v1 controller (`memory`, `cpuacct`, ...) → path.
    pub v1: BTreeMap<String, String>,
    /// The v2 (unified) path: the `0::` line.
    pub v2: Option<String>,
}

impl CgroupPaths {
    pub fn read(pid: u32) -> io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string(format!(
            "/proc/{pid}/cgroup"
        ))?))
    }

    /// Parses `hierarchy-id:controller-list:path` lines. Named hierarchies (`name=systemd`)
    /// are skipped: they carry no resource files.
    pub fn parse(text: &str) -> Self {
        let mut paths = Self::default();
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                paths.v2 = Some(path.to_owned());
                continue;
            }
            for controller in controllers
                .split(',')
                .filter(|c| !c.is_empty() && !c.starts_with("name="))
            {
                paths.v1.insert(controller.to_owned(), path.to_owned());
            }
        }
        paths
    }

    /// The cgroup id BPF programs see: the inode of the v2 directory under `unified`.
    pub fn id(&self, unified: &Path) -> Option<u64> {
        let path = self.v2.as_deref()?.trim_start_matches('/');
        fs::metadata(unified.join(path)).ok().map(|m| m.ino())
    }

    /// The container's own directories, those named after its id: a process of the
    /// container that moved below them (systemd inside it, a child cgroup) does not move
    /// the container. Paths without the id (a private cgroup namespace) stay as they are.
    #[must_use]
    pub fn owned_by(mut self, id: &str) -> Self {
        let trim = |path: &mut String| {
            let parts: Vec<&str> = path.split('/').collect();
            if let Some(last) = parts.iter().rposition(|p| p.contains(id)) {
                *path = parts[..=last].join("/");
            }
        };
        self.v2.iter_mut().for_each(trim);
        self.v1.values_mut().for_each(trim);
        self
    }

    /// The v2 directory's depth below the root (`/docker/<id>` is 2), as the kernel counts
    /// a cgroup's level.
    pub fn v2_level(&self) -> Option<u32> {
        let path = self.v2.as_deref()?;
        u32::try_from(path.split('/').filter(|p| !p.is_empty()).count()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_host_with_cgroupfs_driver() {
        // This project's CI host: Docker 20.10, cgroupfs driver, v1 hybrid.
        let text = "\
9:name=systemd:/docker/14712daf36a0
8:pids:/docker/14712daf36a0
4:memory:/docker/14712daf36a0
2:cpuacct:/docker/14712daf36a0
1:cpu:/docker/14712daf36a0
0::/docker/14712daf36a0
";
        let p = CgroupPaths::parse(text);
        assert_eq!(p.v2.as_deref(), Some("/docker/14712daf36a0"));
        assert_eq!(p.v2_level(), Some(2));
        let nested = CgroupPaths::parse(
            "0::/system.slice/docker-14712daf36a0.scope/init.scope\n\
             4:memory:/system.slice/docker-14712daf36a0.scope/child",
        )
        .owned_by("14712daf36a0");
        assert_eq!(
            nested.v2.as_deref(),
            Some("/system.slice/docker-14712daf36a0.scope")
        );
        assert_eq!(
            nested.v1["memory"],
            "/system.slice/docker-14712daf36a0.scope"
        );
        assert_eq!(nested.v2_level(), Some(2));
        let private = CgroupPaths::parse("0::/").owned_by("14712daf36a0");
        assert_eq!(private.v2.as_deref(), Some("/"));
        assert_eq!(p.v1["memory"], "/docker/14712daf36a0");
        assert_eq!(p.v1["cpuacct"], "/docker/14712daf36a0");
        assert!(!p.v1.contains_key("name=systemd"));
    }

    #[test]
    fn combined_controllers_and_systemd_driver() {
        let text = "\
11:cpu,cpuacct:/system.slice/docker-abc.scope
7:net_cls,net_prio:/system.slice/docker-abc.scope
1:name=systemd:/system.slice/docker-abc.scope
";
        let p = CgroupPaths::parse(text);
        assert_eq!(p.v1["cpu"], "/system.slice/docker-abc.scope");
        assert_eq!(p.v1["cpuacct"], "/system.slice/docker-abc.scope");
        assert_eq!(p.v1["net_prio"], "/system.slice/docker-abc.scope");
        assert_eq!(p.v2, None);
    }

    #[test]
    fn v2_only_host() {
        let p = CgroupPaths::parse("0::/system.slice/docker-abc.scope\n");
        assert!(p.v1.is_empty());
        assert_eq!(p.v2.as_deref(), Some("/system.slice/docker-abc.scope"));
    }

    #[test]
    fn id_is_the_directory_inode() {
        let dir = std::env::temp_dir().join(format!("dockops-cg-{}", std::process::id()));
        fs::create_dir_all(dir.join("docker/abc")).unwrap();
        let p = CgroupPaths {
            v1: BTreeMap::new(),
            v2: Some("/docker/abc".into()),
        };
        let ino = fs::metadata(dir.join("docker/abc")).unwrap().ino();
        assert_eq!(p.id(&dir), Some(ino));
        assert_eq!(CgroupPaths::default().id(&dir), None);
        fs::remove_dir_all(dir).unwrap();
    }
}

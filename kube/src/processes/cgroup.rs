//! A cgroup v2 of its own for each running instance of a process, where KUBE can make one:
//! the boundary that holds its whole tree (a grandchild that leaves the process group stays
//! inside), that `cgroup.kill` ends at once, and that carries its limits (`memory.max`,
//! `cpu.max`, `pids.max`) when the controllers are available.
//!
//! The cgroups are made beside KUBE, in KUBE's own cgroup: `kube-<tag>-<name>-<n>`, `tag`
//! naming the data dir, so several KUBEs on one machine never touch each other's, and so a
//! KUBE started after `kill -9` finds and kills what the previous one left. Controllers can
//! be enabled only for the children of a cgroup without processes of its own: when KUBE is
//! alone in its cgroup (a systemd unit with `Delegate=yes`, a container with a cgroup
//! namespace) it moves itself into a `kube` leaf first; otherwise the cgroups hold the tree
//! without limits.
//!
//! Where there is no writable cgroup v2 at all, everything here is absent and the process
//! group (with the parent-death signal) is the boundary, as before.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The controllers KUBE uses, in `cgroup.subtree_control` spelling.
const WANTED: [&str; 3] = ["memory", "cpu", "pids"];

/// Where KUBE makes the cgroups of its processes.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
    /// `kube-<tag>-`.
    prefix: String,
    /// The controllers enabled for the children of `base`.
    pub controllers: Vec<&'static str>,
}

/// One instance's cgroup.
#[derive(Debug)]
pub struct Group {
    pub path: PathBuf,
    /// `cgroup.procs`, opened before the fork so the child moves itself in between fork and
    /// exec with one write(2).
    procs: File,
}

/// How each configured limit is enforced, for `kube process show` and the start log.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Enforcement {
    pub memory: Option<&'static str>,
    pub cpu: Option<&'static str>,
    pub pids: Option<&'static str>,
}

impl Enforcement {
    /// `cgroup` where the controller is enabled; memory falls back to `watchdog` (KUBE
    /// samples the group's resident memory); the others are `not enforced`.
    pub fn of(limits: &config::Limits, controllers: &[&'static str]) -> Enforcement {
        let by = |set: bool, c: &str, fallback: &'static str| {
            set.then(|| {
                if controllers.contains(&c) {
                    "cgroup"
                } else {
                    fallback
                }
            })
        };
        Enforcement {
            memory: by(limits.memory_mib.is_some(), "memory", "watchdog"),
            cpu: by(limits.cpu_percent.is_some(), "cpu", "not enforced"),
            pids: by(limits.pids.is_some(), "pids", "not enforced"),
        }
    }
}

impl Cgroups {
    /// The cgroup v2 hierarchy of this process, when it is mounted and writable; `None`
    /// otherwise (and KUBE supervises by process groups alone).
    pub fn detect(data_dir: &Path) -> Option<Cgroups> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = cgroup2_mount(&mountinfo)?;
        let own = own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
        let mut base = mount.join(own.trim_start_matches('/'));
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let available =
            std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<&'static str> = WANTED
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .collect();
        let mut controllers = Vec::new();
        if !wanted.is_empty() {
            match enable(&base, &wanted) {
                Ok(()) => controllers = wanted,
                Err(_) if alone(&base) => {
                    // KUBE's own cgroup holds KUBE: move it into a leaf, then enable.
                    let leaf = base.join("kube");
                    let moved = std::fs::create_dir_all(&leaf).and_then(|()| {
                        std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
                    });
                    if moved.is_ok() && enable(&base, &wanted).is_ok() {
                        controllers = wanted;
                    }
                }
                Err(e) => {
                    tracing::info!(cgroup = %base.display(), error = %e, "processes: cgroup controllers not available to KUBE; limits other than memory are not enforced");
                }
            }
        }
        // A probe that KUBE may make cgroups here at all.
        let tag = tag(data_dir);
        let prefix = format!("kube-{tag}-");
        let probe = base.join(format!("{prefix}probe"));
        if std::fs::create_dir(&probe).is_err() && !probe.is_dir() {
            return None;
        }
        let _ = std::fs::remove_dir(&probe);
        base = base.canonicalize().unwrap_or(base);
        Some(Cgroups {
            base,
            prefix,
            controllers,
        })
    }

    /// Makes the cgroup of instance `n` of `name`, with `limits` where its controllers allow.
    pub fn create(&self, name: &str, n: u64, limits: &config::Limits) -> std::io::Result<Group> {
        let path = self.base.join(format!("{}{name}-{n}", self.prefix));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // Left by an earlier run of this KUBE: empty it first.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => kill_all(&path),
            Err(e) => return Err(e),
        }
        let set = |file: &str, value: String| {
            if let Err(e) = std::fs::write(path.join(file), &value) {
                tracing::warn!(cgroup = %path.display(), file, value, error = %e, "processes: cannot set a limit");
            }
        };
        if self.controllers.contains(&"memory")
            && let Some(mib) = limits.memory_mib
        {
            set("memory.max", mib.saturating_mul(1 << 20).to_string());
            // Over the limit means over the limit, not into swap.
            set("memory.swap.max", "0".into());
        }
        if self.controllers.contains(&"cpu")
            && let Some(percent) = limits.cpu_percent
        {
            set("cpu.max", cpu_max(percent));
        }
        if self.controllers.contains(&"pids")
            && let Some(pids) = limits.pids
        {
            set("pids.max", pids.to_string());
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))?;
        Ok(Group { path, procs })
    }

    /// Kills and removes every cgroup a previous run of this KUBE (same data dir) left.
    pub fn kill_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with(&self.prefix) && e.path().is_dir() {
                let path = e.path();
                if !pids(&path).is_empty() {
                    tracing::warn!(cgroup = %path.display(), "processes: killing a cgroup left by a previous KUBE");
                }
                kill_all(&path);
                remove(&path);
            }
        }
    }
}

impl Group {
    /// The descriptor of `cgroup.procs`, for the child to write `0` to (itself).
    pub fn procs_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.procs.as_raw_fd()
    }

    /// Kills every process in it (`cgroup.kill`, or each one where that is missing).
    pub fn kill(&self) {
        kill_all(&self.path);
    }

    /// How many times the kernel's OOM killer killed in it (`memory.events`).
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.events"))
            .map(|t| oom_kills(&t))
            .unwrap_or(0)
    }

    /// Kills what is left and removes the cgroup.
    pub fn remove(self) {
        kill_all(&self.path);
        drop(self.procs);
        remove(&self.path);
    }
}

/// `cpu.max` for `percent` of one CPU over a 100 ms period.
fn cpu_max(percent: u32) -> String {
    format!(
        "{} 100000",
        u64::from(percent).saturating_mul(1000).max(1000)
    )
}

fn enable(base: &Path, controllers: &[&str]) -> std::io::Result<()> {
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .open(base.join("cgroup.subtree_control"))?
        .write_all(line.join(" ").as_bytes())
}

/// Whether KUBE is the only process in the cgroup at `base`.
fn alone(base: &Path) -> bool {
    pids(base) == [std::process::id()]
}

fn pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_all(path: &Path) {
    if std::fs::write(path.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    // Before Linux 5.14: one by one, a few rounds for what forks meanwhile.
    for _ in 0..10 {
        let left = pids(path);
        if left.is_empty() {
            return;
        }
        for pid in left {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill only sends a signal.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes an emptied cgroup: the kernel lets go of killed processes shortly after.
fn remove(path: &Path) {
    for _ in 0..100 {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    tracing::warn!(cgroup = %path.display(), "processes: cannot remove a cgroup");
}

/// The mount point of the cgroup v2 hierarchy in `/proc/self/mountinfo` (pure).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(point.replace("\\040", " ")))
    })
}

/// This process's cgroup v2 path in `/proc/self/cgroup` (pure): the `0::` line.
fn own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/') && !p.contains(".."))
        .map(|p| p.trim_end().to_owned())
}

fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Eight hex digits naming the data dir.
fn tag(data_dir: &Path) -> String {
    use sha2::Digest;
    let dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_owned());
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_and_own_path() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
        let v1_and_v2 = "4:memory:/x\n0::/system.slice/kube.service\n";
        assert_eq!(
            own_cgroup(v1_and_v2).as_deref(),
            Some("/system.slice/kube.service")
        );
        assert_eq!(own_cgroup("0::/a/../b\n"), None);
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn limits_in_cgroup_terms() {
        assert_eq!(cpu_max(150), "150000 100000");
        assert_eq!(cpu_max(0), "1000 100000");
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"), 2);
        let limits = config::Limits {
            memory_mib: Some(64),
            cpu_percent: Some(50),
            pids: None,
        };
        assert_eq!(
            Enforcement::of(&limits, &["pids"]),
            Enforcement {
                memory: Some("watchdog"),
                cpu: Some("not enforced"),
                pids: None
            }
        );
        assert_eq!(Enforcement::of(&limits, &WANTED).memory, Some("cgroup"));
    }
}

//! `dockops-bpf policy check FILE`: validates a policy file offline (no root, no engine);
//! and the policy file `watch --policy` follows.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use dockops::policy::file::{self, Policy, RuleError};

use super::InputError;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check a policy file: print each rule that would be refused and why; exit 2 if any is
    /// (the agent keeps the good rules of a file with bad ones).
    Check {
        /// The TOML policy file.
        file: PathBuf,
    },
}

pub fn run(command: &Command) -> anyhow::Result<()> {
    let Command::Check { file: path } = command;
    let (policy, errors) = read(path)?;
    for error in &errors {
        println!("{}: {error}", path.display());
    }
    let summary = summary(path, &policy, &errors);
    if errors.is_empty() {
        println!("{summary}");
        Ok(())
    } else {
        Err(InputError(summary).into())
    }
}

/// Reads and parses a policy file; a file that cannot be read or is not TOML is an input
/// error.
fn read(path: &Path) -> Result<(Policy, Vec<RuleError>), InputError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        InputError(format!(
            "cannot read the policy file {}: {e}",
            path.display()
        ))
    })?;
    file::parse(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))
}

fn summary(path: &Path, policy: &Policy, errors: &[RuleError]) -> String {
    let groups = policy.rules.iter().filter(|r| r.group.is_some()).count();
    format!(
        "{}: {} rule(s) in force ({groups} shared group cap(s)), {} refused",
        path.display(),
        policy.rules.len(),
        errors.len()
    )
}

/// The policy file an agent follows: re-read when it changes (modification time, size or
/// inode) or on demand (SIGHUP).
pub struct Followed {
    path: PathBuf,
    stamp: Option<(SystemTime, u64, u64)>,
}

impl Followed {
    /// Reads the file for the first time: refused rules are warned about, a file that
    /// cannot be read at all is an input error, except a missing default file (no rules
    /// until it appears).
    pub fn open(path: Option<PathBuf>) -> Result<(Self, Policy), InputError> {
        let default = path.is_none();
        let mut followed = Self {
            path: path.unwrap_or_else(|| file::DEFAULT_PATH.into()),
            stamp: None,
        };
        followed.stamp = followed.stamp();
        if default && followed.stamp.is_none() {
            return Ok((followed, Policy::default()));
        }
        let policy = followed.load()?;
        Ok((followed, policy))
    }

    /// The file again if it changed since it was last read (`force`: whether or not).
    /// A file that became unreadable, was removed or is no longer TOML keeps the policy in
    /// force, with a warning (empty the file to drop every rule); refused rules are warned
    /// about and the others returned.
    pub fn reload(&mut self, force: bool) -> Option<Policy> {
        let stamp = self.stamp();
        if !force && stamp == self.stamp {
            return None;
        }
        self.stamp = stamp;
        match self.load() {
            Ok(policy) => Some(policy),
            Err(error) => {
                tracing::warn!("{error}; the policy read before stays in force");
                None
            }
        }
    }

    fn load(&self) -> Result<Policy, InputError> {
        let (policy, errors) = read(&self.path)?;
        for error in &errors {
            tracing::warn!(
                "{}: {error}; the file's other rules apply",
                self.path.display()
            );
        }
        tracing::info!("{}", summary(&self.path, &policy, &errors));
        Ok(policy)
    }

    fn stamp(&self) -> Option<(SystemTime, u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    }
}

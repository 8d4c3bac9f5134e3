//! `dockops-bpf policy check FILE`: validates a policy file offline (no root, no engine).

use std::path::PathBuf;

use dockops::policy::file;

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
    let text = std::fs::read_to_string(path).map_err(|e| {
        InputError(format!(
            "cannot read the policy file {}: {e}",
            path.display()
        ))
    })?;
    let (policy, errors) =
        file::parse(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    for error in &errors {
        println!("{}: {error}", path.display());
    }
    let groups = policy.rules.iter().filter(|r| r.group.is_some()).count();
    let summary = format!(
        "{}: {} rule(s) in force ({groups} shared group cap(s)), {} refused",
        path.display(),
        policy.rules.len(),
        errors.len()
    );
    if errors.is_empty() {
        println!("{summary}");
        Ok(())
    } else {
        Err(InputError(summary).into())
    }
}

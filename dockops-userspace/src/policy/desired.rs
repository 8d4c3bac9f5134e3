//! One container's desired limits from its three sources, limit by limit: what `limit` set
//! (the CLI) wins over the container's `dockops.*` labels, which win over the policy file.
//! Pure: the caller says which limits the CLI holds; what is left is for the agent to apply.

use std::{collections::BTreeMap, fmt};

use super::{
    file::{self, Policy},
    labels::{self, Declared, LabelError},
    resources::IoKind,
};
use crate::discovery::Container;

/// Where a limit comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `dockops-bpf limit`.
    Cli,
    /// A `dockops.*` label on the container.
    Label,
    /// This rule (1-based) of the policy file.
    Rule(usize),
}

impl fmt::Display for Source {
    /// As `show` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cli => f.write_str("dockops"),
            Self::Label => f.write_str("label"),
            Self::Rule(n) => write!(f, "policy rule {n}"),
        }
    }
}

/// What the labels and the policy file ask for one container, less what the CLI holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The limits for the agent to apply.
    pub limits: Declared,
    /// Who set each limit (names as [`Declared::names`] spells them), the CLI's included.
    pub sources: BTreeMap<&'static str, Source>,
    /// Labels that could not be used.
    pub refused: Vec<LabelError>,
    /// The group cap it shares, unless it has caps of its own (from the CLI, a label or a
    /// rule): those win.
    pub group: Option<Group>,
}

/// A group cap a container shares with the other containers its rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its id in the datapath ([`file::group_id`]).
    pub id: u32,
    /// As written: `compose:shop`.
    pub name: String,
    /// The rule (1-based) that sets it.
    pub rule: usize,
    /// The group's egress, ingress and burst.
    pub caps: Declared,
}

impl Wanted {
    /// The limits labels or the file set, by name, with their source as `show` prints it.
    pub fn applied(&self) -> BTreeMap<String, String> {
        let mut applied: BTreeMap<String, String> = self
            .sources
            .iter()
            .filter(|(_, s)| **s != Source::Cli)
            .map(|(n, s)| ((*n).to_owned(), s.to_string()))
            .collect();
        if let Some(g) = &self.group {
            for (name, set) in [
                ("egress", g.caps.egress_bits.is_some()),
                ("ingress", g.caps.ingress_bits.is_some()),
            ] {
                if set {
                    applied.insert(
                        name.to_owned(),
                        format!("policy rule {} (group {})", g.rule, g.name),
                    );
                }
            }
        }
        applied
    }
}

/// The limits `limit` holds for a container, as label names: `held` as the state file names
/// them, the block IO kinds it throttles, and whether it recorded caps (then the caps are
/// the CLI's as a whole).
pub fn cli_names(
    held: impl IntoIterator<Item = impl AsRef<str>>,
    io: impl IntoIterator<Item = IoKind>,
    caps: bool,
) -> Vec<&'static str> {
    let mut names = Vec::new();
    for name in held {
        names.extend_from_slice(match name.as_ref() {
            "cpus" => &["cpus", "cpu-period", "cpu-quota"],
            "cpu_shares" => &["cpu-shares"],
            "cpuset_cpus" => &["cpuset-cpus"],
            "cpuset_mems" => &["cpuset-mems"],
            "memory" => &["memory"],
            "memory_swap" => &["memory-swap"],
            "memory_reservation" => &["memory-reservation"],
            "pids" => &["pids-limit"],
            "storage" => &["storage-size"],
            _ => &[],
        });
    }
    names.extend(io.into_iter().map(IoKind::flag));
    if caps {
        names.extend(["egress", "ingress", "burst"]);
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// The desired limits of `container` from its labels and `file` (none: labels only), less
/// `cli` (from [`cli_names`]).
pub fn wanted(container: &Container, file: Option<&Policy>, cli: &[&'static str]) -> Wanted {
    let (mut limits, rules) = file.map_or_else(Default::default, |f| {
        f.for_container(&container.name, &container.image, &container.labels)
    });
    let mut sources: BTreeMap<&'static str, Source> = rules
        .into_iter()
        .map(|(n, r)| (n, Source::Rule(r)))
        .collect();
    let (labelled, refused) = labels::declared(&container.labels);
    sources.extend(labelled.names().into_iter().map(|n| (n, Source::Label)));
    limits.overlay(&labelled);
    // Caps are one unit (a burst belongs to its rates): where the labels give a rate, a
    // burst from the file does not apply to it.
    if (labelled.egress_bits.is_some() || labelled.ingress_bits.is_some())
        && labelled.burst_bytes.is_none()
        && limits.burst_bytes.take().is_some()
    {
        sources.remove("burst");
    }
    for &name in cli {
        if limits.names().contains(&name) {
            limits.clear(name);
        }
        if sources.contains_key(name) || !matches!(name, "egress" | "ingress" | "burst") {
            sources.insert(name, Source::Cli);
        }
    }
    let own_caps = ["egress", "ingress"]
        .iter()
        .any(|n| sources.contains_key(n) || cli.contains(n));
    let group = file
        .filter(|_| !own_caps)
        .and_then(|f| f.group_for(&container.name, &container.image, &container.labels))
        .and_then(|rule| {
            let name = rule.group.clone()?;
            Some(Group {
                id: file::group_id(&name),
                name,
                rule: rule.number,
                caps: rule.limits.clone(),
            })
        });
    Wanted {
        limits,
        sources,
        refused,
        group,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::labels::tests::labels;

    fn container(pairs: &[(&str, &str)]) -> Container {
        Container {
            name: "web-1".into(),
            image: "nginx:1".into(),
            labels: labels(pairs),
            ..Container::default()
        }
    }

    const FILE: &str = r#"
        [[rule]]
        name = "web-*"
        memory = "512m"
        cpus = "1"
        egress = "20mbit"
        burst = "1mb"
    "#;

    #[test]
    fn cli_beats_label_beats_file_limit_by_limit() {
        let (policy, _) = file::parse(FILE).unwrap();
        let c = container(&[("dockops.memory", "256m"), ("dockops.pids-limit", "50")]);
        let cli = cli_names(["cpus"], [], false);
        let w = wanted(&c, Some(&policy), &cli);
        assert_eq!(
            w.limits.resources.memory,
            Some(256 << 20),
            "label over file"
        );
        assert_eq!(w.limits.resources.pids_limit, Some(50));
        assert_eq!(w.limits.resources.nano_cpus, None, "the CLI holds cpus");
        assert_eq!(w.limits.egress_bits, Some(20_000_000), "file only");
        assert_eq!(w.sources["memory"], Source::Label);
        assert_eq!(w.sources["egress"], Source::Rule(1));
        assert_eq!(w.sources["cpus"], Source::Cli);
        assert_eq!(w.sources["cpu-quota"], Source::Cli);
        let applied = w.applied();
        assert_eq!(applied["memory"], "label");
        assert_eq!(applied["burst"], "policy rule 1");
        assert!(!applied.contains_key("cpus"));
    }

    #[test]
    fn caps_are_one_unit() {
        let (policy, _) = file::parse(FILE).unwrap();
        let labelled = wanted(
            &container(&[("dockops.egress", "5mbit")]),
            Some(&policy),
            &[],
        );
        assert_eq!(labelled.limits.egress_bits, Some(5_000_000));
        assert_eq!(
            labelled.limits.burst_bytes, None,
            "the file's burst was sized for its own rate"
        );
        let cli = cli_names(Vec::<String>::new(), [], true);
        let capped = wanted(&container(&[]), Some(&policy), &cli);
        assert_eq!(capped.limits.egress_bits, None);
        assert_eq!(capped.sources["egress"], Source::Cli);
        assert!(!capped.sources.contains_key("ingress"));
        assert_eq!(capped.limits.resources.memory, Some(512 << 20));
    }

    #[test]
    fn a_group_cap_applies_where_no_own_cap_does() {
        let (policy, errors) = file::parse(
            r#"
            [[rule]]
            group = "compose:shop"
            egress = "100mbit"
            "#,
        )
        .unwrap();
        assert_eq!(errors, []);
        let shop = [("com.docker.compose.project", "shop")];
        let member = wanted(&container(&shop), Some(&policy), &[]);
        let group = member.group.clone().expect("a member");
        assert_eq!((group.rule, group.caps.egress_bits), (1, Some(100_000_000)));
        assert_eq!(
            member.applied()["egress"],
            "policy rule 1 (group compose:shop)"
        );
        let own = [shop[0], ("dockops.egress", "5mbit")];
        assert_eq!(wanted(&container(&own), Some(&policy), &[]).group, None);
        let cli = cli_names(Vec::<String>::new(), [], true);
        assert_eq!(wanted(&container(&shop), Some(&policy), &cli).group, None);
        assert_eq!(wanted(&container(&[]), Some(&policy), &[]).group, None);
    }

    #[test]
    fn no_file_means_labels_alone() {
        let w = wanted(
            &container(&[("dockops.cpus", "0.5"), ("dockops.memory", "lots")]),
            None,
            &[],
        );
        assert_eq!(w.limits.resources.nano_cpus, Some(500_000_000));
        assert_eq!(w.refused.len(), 1);
        assert_eq!(w.limits.names(), ["cpus"]);
    }
}

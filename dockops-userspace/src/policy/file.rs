//! The policy file (`--policy FILE`, TOML): rules that give containers limits by name,
//! image, label or compose project, and bandwidth caps shared by a group of containers.
//! Pure: parsed and checked here (`dockops-bpf policy check FILE`); a bad rule is reported
//! and the good ones kept.
//!
//! ```toml
//! [[rule]]
//! name = "web-*"                  # glob on the container's name
//! image = "nginx:*"               # glob on its image
//! label = "tier=frontend"         # KEY=VALUE, or KEY alone
//! project = "shop"                # compose project
//! egress = "50mbit"               # any `limit` flag, as labels take them
//! memory = "512m"
//! device-write-bps = "/dev/vda:10mb"
//!
//! [[rule]]
//! group = "compose:shop"          # or "label:KEY=VALUE": one cap for all of them together
//! egress = "100mbit"
//! ingress = "100mbit"
//! ```
//! A rule's matchers must all match; later rules override earlier ones, limit by limit.

use std::collections::BTreeMap;

use glob::Pattern;

use super::labels::{self, Declared};

/// The file `watch` follows unless given another (`--policy`); none there is no rules.
pub const DEFAULT_PATH: &str = "/etc/dockops/policy.toml";

/// Docker compose's label naming a container's project.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";

/// Keys of a rule that select containers rather than limit them.
const MATCHERS: &[&str] = &["name", "image", "label", "project", "group"];

/// Which containers a rule is for; every matcher given must match.
#[derive(Clone, Debug, Default)]
pub struct Match {
    pub name: Option<Pattern>,
    pub image: Option<Pattern>,
    /// KEY, and the VALUE it must have (None: any).
    pub label: Option<(String, Option<String>)>,
    pub project: Option<String>,
}

impl Match {
    pub fn matches(&self, name: &str, image: &str, labels: &BTreeMap<String, String>) -> bool {
        self.name.as_ref().is_none_or(|p| p.matches(name))
            && self.image.as_ref().is_none_or(|p| p.matches(image))
            && self.label.as_ref().is_none_or(|(key, value)| {
                labels
                    .get(key)
                    .is_some_and(|v| value.as_ref().is_none_or(|want| v == want))
            })
            && self
                .project
                .as_ref()
                .is_none_or(|p| labels.get(COMPOSE_PROJECT) == Some(p))
    }
}

/// One rule of the file.
#[derive(Clone, Debug)]
pub struct Rule {
    /// 1-based, as messages count them.
    pub number: usize,
    pub matches: Match,
    /// Set for a group rule: its egress and ingress are one budget for every container it
    /// matches (`group = "compose:NAME"` or `"label:KEY=VALUE"`, as written).
    pub group: Option<String>,
    pub limits: Declared,
}

/// What dockops read from a policy file.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The per-container limits of the rules (not the groups) that match, later rules
    /// overriding earlier ones, and the rule that set each (by [`Declared::names`]).
    pub fn for_container(
        &self,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
    ) -> (Declared, BTreeMap<&'static str, usize>) {
        let mut out = Declared::default();
        let mut rules = BTreeMap::new();
        for rule in self.rules.iter().filter(|r| r.group.is_none()) {
            if rule.matches.matches(name, image, labels) {
                out.overlay(&rule.limits);
                rules.extend(rule.limits.names().into_iter().map(|n| (n, rule.number)));
            }
        }
        (out, rules)
    }
}

impl Policy {
    /// The group rule whose shared caps apply to a container: the last that matches.
    pub fn group_for(
        &self,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&Rule> {
        self.rules
            .iter()
            .rev()
            .find(|r| r.group.is_some() && r.matches.matches(name, image, labels))
    }
}

/// A group's id in the datapath: a hash of its name as written (`compose:shop`), so that
/// it stays the same across reloads and agent restarts; never 0 (a container's own caps).
pub fn group_id(group: &str) -> u32 {
    // FNV-1a.
    let hash = group.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash.max(1)
}

/// A policy file that is not TOML at all: nothing in it can be used.
#[derive(Debug, thiserror::Error)]
#[error("not a valid policy file: {0}")]
pub struct FileError(String);

/// One rule dockops refused, and why; the file's other rules still count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {reason}")]
pub struct RuleError {
    pub rule: usize,
    pub reason: String,
}

/// Parses a policy file: its good rules, and the reasons for the others.
pub fn parse(text: &str) -> Result<(Policy, Vec<RuleError>), FileError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| FileError(e.to_string()))?;
    let rules = match table.remove("rule") {
        None => Vec::new(),
        Some(toml::Value::Array(rules)) => rules,
        Some(_) => {
            return Err(FileError(
                "`rule` must be an array of tables: [[rule]]".into(),
            ));
        }
    };
    if let Some(key) = table.keys().next() {
        return Err(FileError(format!(
            "unknown top-level key `{key}`: a policy file holds [[rule]] tables"
        )));
    }
    let mut policy = Policy::default();
    let mut errors = Vec::new();
    for (i, value) in rules.into_iter().enumerate() {
        let number = i + 1;
        match rule(number, value) {
            Ok(rule) => policy.rules.push(rule),
            Err(reasons) => errors.extend(reasons.into_iter().map(|reason| RuleError {
                rule: number,
                reason,
            })),
        }
    }
    Ok((policy, errors))
}

/// One `[[rule]]` table; every reason it is refused.
fn rule(number: usize, value: toml::Value) -> Result<Rule, Vec<String>> {
    let toml::Value::Table(table) = value else {
        return Err(vec!["a rule must be a table".into()]);
    };
    let mut reasons = Vec::new();
    let text = |key: &str| match table.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} must be a string, not {}", other.type_str())),
    };
    let mut get = |key: &str| {
        text(key).unwrap_or_else(|e| {
            reasons.push(e);
            None
        })
    };
    let (name, image, label, project, group) = (
        get("name"),
        get("image"),
        get("label"),
        get("project"),
        get("group"),
    );
    let mut matches = Match {
        label: label.map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (l, None),
        }),
        project,
        ..Match::default()
    };
    for (key, pattern, slot) in [
        ("name", name, &mut matches.name),
        ("image", image, &mut matches.image),
    ] {
        match pattern.as_deref().map(Pattern::new).transpose() {
            Ok(p) => *slot = p,
            Err(e) => reasons.push(format!("{key}: not a glob pattern: {e}")),
        }
    }
    if let Some(group) = &group {
        match group_match(group) {
            Ok((key, value)) => matches.label = Some((key, Some(value))),
            Err(e) => reasons.push(e),
        }
    }
    let declared = limits(&table, &mut reasons);
    if group.is_some() {
        let shared = Declared {
            egress_bits: declared.egress_bits,
            ingress_bits: declared.ingress_bits,
            burst_bytes: declared.burst_bytes,
            ..Declared::default()
        };
        if shared != declared {
            reasons.push(
                "a group rule shares egress, ingress and burst only: put per-container limits \
                 in a rule without `group`"
                    .into(),
            );
        }
        if shared.egress_bits.is_none() && shared.ingress_bits.is_none() {
            reasons.push("a group rule needs egress or ingress".into());
        }
    } else if matches.name.is_none()
        && matches.image.is_none()
        && matches.label.is_none()
        && matches.project.is_none()
    {
        reasons.push(
            "matches every container: give name, image, label, project or group (name = \"*\" \
             if every container is meant)"
                .into(),
        );
    } else if declared.is_empty() && reasons.is_empty() {
        reasons.push("sets no limit".into());
    }
    if reasons.is_empty() {
        Ok(Rule {
            number,
            matches,
            group,
            limits: declared,
        })
    } else {
        Err(reasons)
    }
}

/// The limits a rule sets (every key but the matchers), with the reasons for bad ones.
fn limits(table: &toml::Table, reasons: &mut Vec<String>) -> Declared {
    let mut declared = Declared::default();
    for (key, value) in table
        .iter()
        .filter(|(k, _)| !MATCHERS.contains(&k.as_str()))
    {
        let one = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(n) => Some(n.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            _ => None,
        };
        let value = match value {
            toml::Value::Array(items) => items
                .iter()
                .map(one)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            other => one(other),
        };
        let Some(value) = value else {
            reasons.push(format!(
                "{key}: a limit is a string or a number (a list for devices)"
            ));
            continue;
        };
        if let Err(e) = labels::apply(&mut declared, key, value.trim()) {
            reasons.push(format!("{key} = {value:?}: {e}"));
        }
    }
    declared
}

/// `compose:NAME` or `label:KEY=VALUE`, as the label that selects the group's containers.
fn group_match(group: &str) -> Result<(String, String), String> {
    if let Some(project) = group.strip_prefix("compose:").filter(|p| !p.is_empty()) {
        return Ok((COMPOSE_PROJECT.to_owned(), project.to_owned()));
    }
    if let Some((key, value)) = group
        .strip_prefix("label:")
        .and_then(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
    {
        return Ok((key.to_owned(), value.to_owned()));
    }
    Err(format!(
        "group = {group:?}: give \"compose:PROJECT\" or \"label:KEY=VALUE\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::labels::tests::labels;

    const FILE: &str = r#"
        [[rule]]
        name = "web-*"
        egress = "50mbit"
        memory = "512m"

        [[rule]]
        image = "postgres:*"
        label = "tier=db"
        device-write-bps = ["/dev/vda:10mb", "/dev/vdb:5mb"]
        pids-limit = 200

        [[rule]]
        project = "shop"
        egress = "20mbit"

        [[rule]]
        group = "compose:shop"
        egress = "100mbit"
        ingress = "100mbit"
    "#;

    #[test]
    fn rules_match_and_later_ones_override() {
        let (policy, errors) = parse(FILE).unwrap();
        assert_eq!(errors, []);
        assert_eq!(policy.rules.len(), 4);
        let shop = labels(&[(COMPOSE_PROJECT, "shop")]);
        let (web, rules) = policy.for_container("web-1", "nginx:1", &shop);
        assert_eq!(web.egress_bits, Some(20_000_000), "rule 3 overrides rule 1");
        assert_eq!(web.resources.memory, Some(512 << 20));
        assert_eq!((rules["egress"], rules["memory"]), (3, 1));
        let (db, _) = policy.for_container("db", "postgres:16", &labels(&[("tier", "db")]));
        assert_eq!(db.resources.io.len(), 2);
        assert_eq!(db.resources.pids_limit, Some(200));
        assert!(
            policy
                .for_container("db", "postgres:16", &labels(&[("tier", "cache")]))
                .0
                .is_empty()
        );
        let group = &policy.rules[3];
        assert_eq!(group.group.as_deref(), Some("compose:shop"));
        assert_eq!(
            policy.group_for("any", "any", &shop).map(|r| r.number),
            Some(4)
        );
        assert!(policy.group_for("any", "any", &labels(&[])).is_none());
        assert_ne!(group_id("compose:shop"), group_id("compose:shoq"));
        assert_ne!(group_id(""), 0);
        assert!(group.matches.matches("anything", "any", &shop));
        assert!(!group.matches.matches("anything", "any", &labels(&[])));
    }

    #[test]
    fn bad_rules_are_reported_and_good_ones_kept() {
        let (policy, errors) = parse(
            r#"
            [[rule]]
            name = "ok-*"
            cpus = "0.5"

            [[rule]]
            egress = "50mbit"

            [[rule]]
            name = "x"
            egress = "fast"
            colour = "blue"

            [[rule]]
            group = "shop"
            egress = "1gbit"

            [[rule]]
            group = "label:team=a"
            memory = "1g"
            "#,
        )
        .unwrap();
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].number, 1);
        let numbered: Vec<usize> = errors.iter().map(|e| e.rule).collect();
        assert_eq!(numbered, [2, 3, 3, 4, 5, 5]);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("matches every container"), "{text:?}");
        assert!(text[3].contains("compose:PROJECT"), "{text:?}");
        assert!(
            text[4].contains("egress, ingress and burst only"),
            "{text:?}"
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_refused_whole() {
        assert!(parse("[[rule]\nname = ").is_err());
        assert!(
            parse("rules = 1")
                .unwrap_err()
                .to_string()
                .contains("rules")
        );
        assert!(parse("").unwrap().0.rules.is_empty());
    }
}

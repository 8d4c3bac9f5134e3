//! Which containers a command acts on: names and ids, labels, a compose project.

use dockops::discovery::Container;

use super::InputError;

/// The label Docker Compose puts on a project's containers.
const COMPOSE_PROJECT: &str = "com.docker.compose.project";

#[derive(clap::Args)]
pub struct Selection {
    /// Containers, by name or id (prefix).
    pub containers: Vec<String>,
    /// Also every running container with this label (KEY=VALUE, or KEY for any value);
    /// several must all match.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Also every running container of this Docker Compose project.
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
}

impl Selection {
    /// The containers selected, each once, in the order given (labelled ones after, by
    /// name). Names that match nothing, or several, are errors.
    pub fn pick<'a>(&self, containers: &'a [Container]) -> Result<Vec<&'a Container>, InputError> {
        if self.containers.is_empty() && self.label.is_empty() && self.project.is_none() {
            return Err(InputError(
                "name the containers, or select them with --label KEY=VALUE or --project NAME"
                    .into(),
            ));
        }
        let mut picked: Vec<&Container> = Vec::new();
        for query in &self.containers {
            let found = find(containers, query)?;
            if !picked.iter().any(|c| c.id == found.id) {
                picked.push(found);
            }
        }
        let mut labels: Vec<(&str, Option<&str>)> = self
            .label
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (l.as_str(), None),
            })
            .collect();
        if let Some(project) = &self.project {
            labels.push((COMPOSE_PROJECT, Some(project)));
        }
        if !labels.is_empty() {
            let mut matching: Vec<&Container> = containers
                .iter()
                .filter(|c| {
                    labels.iter().all(|(k, v)| {
                        c.labels
                            .get(*k)
                            .is_some_and(|have| v.is_none_or(|v| v == have))
                    })
                })
                .collect();
            if matching.is_empty() {
                let wanted: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| v.map_or_else(|| (*k).to_owned(), |v| format!("{k}={v}")))
                    .collect();
                return Err(InputError(format!(
                    "no running container has the label(s) {}",
                    wanted.join(", ")
                )));
            }
            matching.sort_by(|a, b| a.name.cmp(&b.name));
            for c in matching {
                if !picked.iter().any(|p| p.id == c.id) {
                    picked.push(c);
                }
            }
        }
        Ok(picked)
    }
}

/// The one running container `query` names.
pub fn find<'a>(containers: &'a [Container], query: &str) -> Result<&'a Container, InputError> {
    let mut matches = containers.iter().filter(|c| c.matches(query));
    let first = matches.next().ok_or_else(|| {
        InputError(format!(
            "no running container is named or has the id {query:?}"
        ))
    })?;
    if matches.next().is_some() {
        return Err(InputError(format!(
            "{query:?} matches several containers: give more of the id"
        )));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn container(name: &str, id: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            ..Container::default()
        }
    }

    #[test]
    fn names_labels_and_projects() {
        let all = [
            container(
                "web",
                "aaaa1",
                &[(COMPOSE_PROJECT, "shop"), ("tier", "front")],
            ),
            container("db", "bbbb2", &[(COMPOSE_PROJECT, "shop")]),
            container("other", "cccc3", &[("tier", "front")]),
        ];
        let names = |sel: Selection| -> Vec<String> {
            sel.pick(&all)
                .unwrap()
                .iter()
                .map(|c| c.name.clone())
                .collect()
        };
        let sel = |containers: &[&str], label: &[&str], project: Option<&str>| Selection {
            containers: containers.iter().map(|s| (*s).to_owned()).collect(),
            label: label.iter().map(|s| (*s).to_owned()).collect(),
            project: project.map(str::to_owned),
        };
        assert_eq!(names(sel(&["web", "aaaa1"], &[], None)), ["web"]);
        assert_eq!(names(sel(&[], &[], Some("shop"))), ["db", "web"]);
        assert_eq!(names(sel(&[], &["tier=front"], None)), ["other", "web"]);
        assert_eq!(names(sel(&[], &["tier"], Some("shop"))), ["web"]);
        assert_eq!(
            names(sel(&["db"], &["tier=front"], None)),
            ["db", "other", "web"]
        );
        assert!(sel(&[], &[], None).pick(&all).is_err());
        assert!(sel(&["nosuch"], &[], None).pick(&all).is_err());
        let err = sel(&[], &["tier=back"], None).pick(&all).unwrap_err();
        assert!(err.0.contains("tier=back"), "{}", err.0);
    }
}

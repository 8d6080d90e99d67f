//! The chart's RBAC as docs/security.md documents it ("RBAC granted by the Helm chart"), and what
//! `kubectl auth can-i --list` says an installed ServiceAccount may do; shared by tests/chart.rs
//! (the binary run as the chart's ServiceAccount) and tests/e2e_stack.rs (the chart's pods).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use rndc_warden_testkit::ControlPlane;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl auth can-i --list` as `user` in `namespace`, as `(resource, resourceName, verb)`
/// triples, without the rules every authenticated user has (self-reviews, discovery URLs).
pub async fn can_i_list(
    cp: &ControlPlane,
    user: &str,
    namespace: &str,
) -> BTreeSet<(String, String, String)> {
    let out = cp
        .kubectl(["auth", "can-i", "--list", "--as", user, "-n", namespace])
        .await
        .expect("kubectl runs");
    assert!(out.success(), "{}: {}", out.command, out.stderr);
    parse_can_i(&out.stdout)
}

/// Parses the resource rows of `kubectl auth can-i --list` (`Resources  Non-Resource URLs
/// Resource Names  Verbs`; bracketed lists may hold spaces). Non-resource URL rows (which start
/// with blanks) are left out.
pub fn parse_can_i(text: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        if line.starts_with(char::is_whitespace) || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut rest = line.trim();
        while !rest.is_empty() {
            let end = if rest.starts_with('[') {
                rest.find(']').map_or(rest.len(), |i| i + 1)
            } else {
                rest.find(char::is_whitespace).unwrap_or(rest.len())
            };
            fields.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
        let [resource, _urls, names, verbs] = fields.as_slice() else {
            panic!("unexpected `kubectl auth can-i --list` line: {line:?}");
        };
        let list = |s: &str| -> Vec<String> {
            s.trim_matches(['[', ']'])
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let mut names = list(names);
        if names.is_empty() {
            names.push(String::new());
        }
        for verb in list(verbs) {
            for name in &names {
                out.insert((resource.clone(), name.clone(), verb.clone()));
            }
        }
    }
    out
}

/// One grant: where, what, which object name (empty: any), which verb.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub scope: String,
    pub group: String,
    pub resource: String,
    pub name: String,
    pub verb: String,
}

impl Grant {
    /// How `kubectl auth can-i --list` prints the resource (`resource.group[/subresource]`).
    pub fn can_i(&self) -> (String, String, String) {
        let (base, sub) = match self.resource.split_once('/') {
            Some((base, sub)) => (base, format!("/{sub}")),
            None => (self.resource.as_str(), String::new()),
        };
        let resource = if self.group.is_empty() {
            format!("{base}{sub}")
        } else {
            format!("{base}.{}{sub}", self.group)
        };
        (resource, self.name.clone(), self.verb.clone())
    }
}

/// The table "RBAC granted by the Helm chart" of docs/security.md, for a release whose full name
/// is `fullname`: each grant with its "When" condition.
fn documented_grants(fullname: &str) -> Vec<(Grant, String)> {
    let path = root().join("docs/security.md");
    let text = std::fs::read_to_string(&path).expect("docs/security.md exists");
    let section = text
        .split("## RBAC granted by the Helm chart")
        .nth(1)
        .expect("docs/security.md has a section \"RBAC granted by the Helm chart\"");
    let clean = |cell: &str| {
        cell.trim()
            .trim_matches('`')
            .replace("<fullname>", fullname)
    };
    let mut grants = Vec::new();
    let rows = section
        .lines()
        .skip_while(|l| !l.starts_with("| Scope |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    for row in rows {
        let cells: Vec<&str> = row.trim().trim_matches('|').split('|').collect();
        let [scope, group, resources, names, verbs, when] = cells.as_slice() else {
            panic!("docs/security.md: a chart RBAC row needs 6 cells: {row:?}");
        };
        let group = clean(group).replace("\"\"", "");
        let names: Vec<String> = names.split(',').map(clean).collect();
        for resource in resources.split(',') {
            for verb in verbs.split(',') {
                for name in &names {
                    grants.push((
                        Grant {
                            scope: clean(scope),
                            group: group.clone(),
                            resource: clean(resource),
                            name: name.clone(),
                            verb: verb.trim().to_owned(),
                        },
                        clean(when),
                    ));
                }
            }
        }
    }
    assert!(
        grants.len() > 10,
        "docs/security.md: no chart RBAC table found"
    );
    grants
}

/// The documented grants that apply under `conditions` (besides `always`).
pub fn documented(fullname: &str, conditions: &[&str]) -> BTreeSet<Grant> {
    documented_grants(fullname)
        .into_iter()
        .filter(|(_, when)| when == "always" || conditions.contains(&when.as_str()))
        .map(|(grant, _)| grant)
        .collect()
}

/// Asserts that `username` (the chart's ServiceAccount, release `fullname` in `release_ns`) may
/// do exactly what docs/security.md documents under `conditions`, in `watched_ns` and in the
/// release namespace, beyond what every authenticated user may (measured with a ServiceAccount
/// that has no bindings).
pub async fn assert_can_i_matches_docs(
    cp: &ControlPlane,
    release_ns: &str,
    username: &str,
    fullname: &str,
    conditions: &[&str],
    watched_ns: &str,
) {
    let nobody = format!("system:serviceaccount:{release_ns}:nobody");
    let documented = documented(fullname, conditions);
    for (namespace, scopes) in [
        (watched_ns, &["watched namespaces", "cluster"][..]),
        (
            release_ns,
            &["watched namespaces", "cluster", "release namespace"][..],
        ),
    ] {
        let baseline = can_i_list(cp, &nobody, namespace).await;
        let granted: BTreeSet<_> = can_i_list(cp, username, namespace)
            .await
            .difference(&baseline)
            .cloned()
            .collect();
        let expected: BTreeSet<_> = documented
            .iter()
            .filter(|g| scopes.contains(&g.scope.as_str()))
            .map(Grant::can_i)
            .collect();
        assert!(
            granted == expected,
            "kubectl auth can-i --list as {username} in {namespace} differs from docs/security.md\n  \
             only granted: {:?}\n  only documented: {:?}",
            granted.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&granted).collect::<Vec<_>>()
        );
    }
}

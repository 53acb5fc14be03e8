//! Policies that validate and say something else than they likely mean:
//! each a [`Diagnostic`] at the entry that says it, which `validate`
//! prints as a warning (and refuses under `--strict`) and the agent logs
//! when it loads the policy. A warning never refuses a policy by itself: a
//! policy that validated before keeps validating, and an upgrade never
//! puts a host on the fallback for one.
//!
//! [`PolicySpec::warnings`] needs no user database; [`Policy::warnings`]
//! adds what only ids and memberships show.

use std::collections::BTreeMap;

use super::{
    Action, Diagnostic, Entry, Identity, Policy, PolicySpec, Resolver, Scope,
    cgroups::{Pattern, PodRule},
    explain::{describe as spelled, described},
};

impl PolicySpec {
    /// The warnings this file gives whatever the host's users, in file
    /// order: a `[deny] cgroups` pattern without `/**`, an `[allow]` of
    /// every cgroup, an `[allow]` of every pod of a namespace.
    pub fn warnings(&self) -> Vec<Diagnostic> {
        let mut warnings: Vec<Diagnostic> = self
            .entries
            .iter()
            .filter_map(|entry| {
                let message = match (entry.action, &entry.identity) {
                    (Action::Deny, Identity::Cgroup(text)) => one_cgroup_denied(text)?,
                    (Action::Allow, Identity::Unit(unit)) if unit == "-.slice" => format!(
                        "{} units \"-.slice\" allows every process: -.slice is the root \
                         slice, whose cgroup is / and every cgroup below it; name the units \
                         that may connect instead",
                        entry.table()
                    ),
                    (Action::Allow, Identity::Pod(text)) => whole_namespace(entry.table(), text)?,
                    (Action::Allow, Identity::Cgroup(text)) if text == "/**" => format!(
                        "{} cgroups \"/**\" allows every process (every cgroup); name the \
                         cgroups that may connect instead, or remove [allow] to allow everyone \
                         [deny] does not name",
                        entry.table()
                    ),
                    _ => return None,
                };
                Some(Diagnostic {
                    at: entry.at,
                    message,
                })
            })
            .collect();
        for set in &self.requests.sets {
            for rule in &set.rules {
                if !super::requests::documented(&rule.path) {
                    warnings.push(Diagnostic {
                        at: rule.at,
                        message: format!(
                            "[requests.{}] rule {:?} is outside the metadata service's \
                             documented tree (/latest/api/token, /latest/meta-data/..., \
                             /latest/user-data, /latest/dynamic/..., and dated versions such as \
                             /2021-03-23/...): check the path, which is matched byte for byte",
                            set.name,
                            rule.text()
                        ),
                    });
                }
            }
        }
        warnings.sort_by_key(|d| d.at);
        warnings
    }
}

/// What `pods = ["namespace/*"]` gives away, if the entry is that form:
/// every pod of the namespace, present and future, whoever creates it.
fn whole_namespace(table: &str, text: &str) -> Option<String> {
    let rule = PodRule::parse(text).ok()?;
    if !rule.whole_namespace() {
        return None;
    }
    Some(format!(
        "{table} pods {text:?} allows every pod of namespace {:?}, present and future: whoever \
         may create a pod there (a Deployment, a Job, a debug pod) reaches the service; name \
         the workloads instead, by their pods' name prefix ({}/NAME-*)",
        rule.namespace, rule.namespace
    ))
}

/// What a `[deny] cgroups` pattern without a final `**` misses, if it
/// does: it names one cgroup, not those below it.
fn one_cgroup_denied(text: &str) -> Option<String> {
    let pattern = Pattern::parse(text).ok()?;
    if pattern.subtree {
        return None;
    }
    let subtree = format!("{}/**", text.trim_end_matches('/'));
    let slice = text.ends_with(".slice");
    Some(format!(
        "[deny] cgroups {text:?} names that one cgroup, not the cgroups below it: a process \
         there escapes the deny by making a child cgroup (a user's systemd session may){}; \
         write {subtree:?} to deny the cgroup and every cgroup below it",
        if slice {
            ", and a slice holds no process of its own, so this matches none"
        } else {
            ""
        }
    ))
}

impl Policy {
    /// Every warning, in file order: the file's ([`PolicySpec::warnings`]),
    /// an `[allow]` of a group that a user `[allow.host]` keeps to the host
    /// is a member of (its processes in a container have the group too,
    /// root's gid 0 first of all), and a user allowed by uid who is a
    /// member of a denied group. `resolver` says who is a member of the
    /// allowed groups.
    pub fn warnings(&self, resolver: &dyn Resolver) -> Vec<Diagnostic> {
        let mut warnings = self.spec.warnings();
        warnings.extend(self.host_users_readmitted(resolver));
        warnings.extend(self.allowed_members_of_denied_groups());
        warnings.extend(self.request_callers_in_allowed_groups(resolver));
        warnings.sort_by_key(|d| d.at);
        warnings
    }

    /// `[allow]` groups that `[allow.host]` users are members of: the group
    /// lets in, from anywhere, what the host-only entry keeps out.
    fn host_users_readmitted(&self, resolver: &dyn Resolver) -> Vec<Diagnostic> {
        let host_users: BTreeMap<u32, &Entry> = self
            .uids
            .iter()
            .filter(|(_, rule)| rule.action == Action::Allow)
            .filter_map(|(&uid, rule)| Some((uid, self.spec.entries.get(rule.entry())?)))
            .filter(|(_, entry)| entry.scope == Scope::Host)
            .collect();
        let groups: BTreeMap<u32, &Entry> = self
            .gids
            .iter()
            .filter(|(_, rule)| rule.action == Action::Allow)
            .filter_map(|(&gid, rule)| Some((gid, self.spec.entries.get(rule.entry())?)))
            .filter(|(_, entry)| entry.scope == Scope::Anywhere)
            .collect();
        if host_users.is_empty() || groups.is_empty() {
            return Vec::new();
        }
        let gids: Vec<u32> = groups.keys().copied().collect();
        // A lookup that fails leaves nothing to warn of: the policy itself
        // does not depend on it.
        let members = resolver.members(&gids).unwrap_or_default();
        let mut warnings = Vec::new();
        for (uid, gid) in members {
            let (Some(host), Some(group)) = (host_users.get(&uid), groups.get(&gid)) else {
                continue;
            };
            warnings.push(Diagnostic {
                at: group.at,
                message: format!(
                    "{} lets in from anywhere what {} at {} keeps to the host: uid {uid} is a \
                     member of gid {gid}, so its processes in a container (root of every \
                     container, for gid 0) have the group too, and are allowed; list the group \
                     in [allow.host], or name who may connect from a container",
                    spelled(group),
                    spelled(host),
                    host.at.in_words()
                ),
            });
        }
        warnings
    }

    /// Users a `[requests.NAME]` table names by uid who are members of a
    /// group another allow entry names (`[allow]`, `[allow.host]`, or
    /// another table): both entries could decide for their processes, and
    /// which one does sets what they may send (docs/request-level.md §6).
    /// The uid is decided first, so the table's rules apply; reordering
    /// the decision, or the user leaving the table, would change that.
    fn request_callers_in_allowed_groups(&self, resolver: &dyn Resolver) -> Vec<Diagnostic> {
        let sets = &self.spec.requests.members;
        if sets.is_empty() {
            return Vec::new();
        }
        let groups: BTreeMap<u32, usize> = self
            .gids
            .iter()
            .filter(|(_, rule)| rule.action == Action::Allow)
            .map(|(&gid, rule)| (gid, rule.entry()))
            .collect();
        let gids: Vec<u32> = groups.keys().copied().collect();
        if gids.is_empty() {
            return Vec::new();
        }
        // A lookup that fails leaves nothing to warn of, as above.
        let members = resolver.members(&gids).unwrap_or_default();
        let mut warnings = Vec::new();
        for (uid, gid) in members {
            let Some(rule) = self.uids.get(&uid).filter(|r| r.action == Action::Allow) else {
                continue;
            };
            let (user, group) = (rule.entry(), groups[&gid]);
            let Some(&set) = sets.get(&user) else {
                continue;
            };
            if sets.get(&group) == Some(&set) {
                continue;
            }
            let (Some(entry), Some(by_group)) =
                (self.spec.entries.get(user), self.spec.entries.get(group))
            else {
                continue;
            };
            let table = described(self, Some(user), entry);
            let name = self
                .spec
                .requests
                .sets
                .get(set)
                .map_or("", |s| s.name.as_str());
            warnings.push(Diagnostic {
                at: entry.at,
                message: format!(
                    "{table} names uid {uid}, which is a member of gid {gid}, allowed by {} at \
                     {}: the uid is decided first, so its processes may send only the \
                     requests of [requests.{name}], and {} decides only for others holding the \
                     group; which entry decides sets what a caller may send, so name the user \
                     in one of them, or take it out of the group",
                    described(self, Some(group), by_group),
                    by_group.at.in_words(),
                    described(self, Some(group), by_group),
                ),
            });
        }
        warnings
    }

    /// Users allowed by uid who are members of a denied group: refused
    /// while they hold the group, and in the user namespaces they create.
    fn allowed_members_of_denied_groups(&self) -> Vec<Diagnostic> {
        let mut warnings = Vec::new();
        for (&uid, &gid) in &self.members {
            let Some(allowed) = self.uids.get(&uid).filter(|r| r.action == Action::Allow) else {
                continue;
            };
            let (Some(entry), Some(denied)) = (
                self.spec.entries.get(allowed.entry()),
                self.gids
                    .get(&gid)
                    .and_then(|r| self.spec.entries.get(r.entry())),
            ) else {
                continue;
            };
            warnings.push(Diagnostic {
                at: entry.at,
                message: format!(
                    "{} allows uid {uid}, which is a member of gid {gid}, denied by {} at {}: \
                     its processes are refused while they hold the group, and in every user \
                     namespace it creates; take it out of the group or the group out of \
                     [deny]",
                    spelled(entry),
                    spelled(denied),
                    denied.at.in_words()
                ),
            });
        }
        warnings
    }
}

#[cfg(test)]
mod tests;

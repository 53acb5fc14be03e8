//! Step two of loading a policy: user and group names become ids through a
//! [`Resolver`] (NSS on a real host), and the checks that need ids run: a
//! name and a number for the same id, an id both allowed and denied, more
//! rules than a kernel map holds.
//!
//! Names are resolved once, at load: a user created later is not covered
//! until the policy is loaded again, which is what the kernel maps (keyed
//! by id) can express anyway.

use std::collections::{BTreeMap, btree_map};

use imds_guard_common::MAX_ID_RULES;
use nix::{
    errno::Errno,
    unistd::{Group, Uid, User},
};

use super::{Diagnostic, IdRule, Identity, Policy, PolicyError, PolicySpec, cgroups, members};

/// Looks up user and group names. `Err` means the lookup itself failed
/// (NSS unreachable, a broken `nsswitch.conf`), not that the name is
/// unknown, which is `Ok(None)`.
pub trait Resolver {
    fn user_id(&self, name: &str) -> Result<Option<u32>, String>;
    fn group_id(&self, name: &str) -> Result<Option<u32>, String>;
    /// The name of `uid`, for messages and logs; `None` when it has none or
    /// the lookup fails.
    fn user_name(&self, uid: u32) -> Option<String>;
    /// The cgroup path of systemd unit `unit`, whether it runs or not;
    /// `Ok(None)` when systemd knows no such unit.
    fn unit_cgroup(&self, unit: &str) -> Result<Option<String>, String>;
    /// The members of the groups `gids`, as `(uid, gid)` pairs: the users
    /// whose primary group one is, and those its entry lists (see
    /// `members.rs`).
    fn members(&self, gids: &[u32]) -> Result<Vec<(u32, u32)>, String>;
}

/// The host's user database, through NSS (`getpwnam_r`, `getgrnam_r`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn user_id(&self, name: &str) -> Result<Option<u32>, String> {
        not_found_is_none(User::from_name(name)).map(|user| user.map(|u| u.uid.as_raw()))
    }

    fn group_id(&self, name: &str) -> Result<Option<u32>, String> {
        not_found_is_none(Group::from_name(name)).map(|group| group.map(|g| g.gid.as_raw()))
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    fn unit_cgroup(&self, unit: &str) -> Result<Option<String>, String> {
        cgroups::units::cgroup_of(unit, &cgroups::units::SystemSystemd)
    }

    fn members(&self, gids: &[u32]) -> Result<Vec<(u32, u32)>, String> {
        members::system_members(gids)
    }
}

/// `getpwnam_r(3)`: "not found" is a null result with 0, but several NSS
/// modules return ENOENT or ESRCH for it instead; only other errors are a
/// failed lookup.
fn not_found_is_none<T>(result: nix::Result<Option<T>>) -> Result<Option<T>, String> {
    match result {
        Ok(found) => Ok(found),
        Err(Errno::ENOENT | Errno::ESRCH) => Ok(None),
        Err(errno) => Err(errno.to_string()),
    }
}

/// The kernel map a rule lands in, and its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    Uid(u32),
    Gid(u32),
}

impl Subject {
    fn map_name(self) -> &'static str {
        match self {
            Self::Uid(_) => "uid",
            Self::Gid(_) => "gid",
        }
    }
}

/// The id `identity` stands for; `None` for identities that are not ids
/// (units, cgroups, pods: see `cgroups/`).
fn subject(identity: &Identity, resolver: &dyn Resolver) -> Result<Option<Subject>, String> {
    let (found, noun, name) = match identity {
        Identity::Unit(_) | Identity::Cgroup(_) | Identity::Pod(_) => return Ok(None),
        Identity::Uid(uid) => return Ok(Some(Subject::Uid(*uid))),
        Identity::Gid(gid) => return Ok(Some(Subject::Gid(*gid))),
        Identity::User(name) => (
            resolver.user_id(name).map(|id| id.map(Subject::Uid)),
            "user",
            name,
        ),
        Identity::Group(name) => (
            resolver.group_id(name).map(|id| id.map(Subject::Gid)),
            "group",
            name,
        ),
    };
    match found {
        Ok(Some(subject)) => Ok(Some(subject)),
        Ok(None) => Err(format!("{identity} does not exist on this host")),
        Err(cause) => Err(format!("cannot look up {noun} {name:?}: {cause}")),
    }
}

/// `user "root" (uid 0)` for a name, `uid 0` for a number: a message about
/// two entries that met at one id says which id.
fn spelled(identity: &Identity, subject: Subject) -> String {
    match (identity, subject) {
        (Identity::User(_) | Identity::Group(_), Subject::Uid(id) | Subject::Gid(id)) => {
            format!("{identity} ({} {id})", subject.map_name())
        }
        _ => identity.to_string(),
    }
}

/// Why entry `i` cannot join the rule `earlier` made for the same id.
fn clash(spec: &PolicySpec, subjects: &[Option<Subject>], i: usize, earlier: IdRule) -> String {
    let spell = |i: usize| {
        let identity = &spec.entries[i].identity;
        subjects[i].map_or_else(|| identity.to_string(), |s| spelled(identity, s))
    };
    let (entry, first) = (&spec.entries[i], &spec.entries[earlier.entry()]);
    let (this, that, at) = (spell(i), spell(earlier.entry()), first.at.in_words());
    if earlier.action == entry.action {
        let done = earlier.action.done();
        format!("duplicate rule: {this} is already {done} by {that} at {at}")
    } else {
        let (here, there) = (entry.action.done(), earlier.action.done());
        format!("contradictory rules: {this} is {here} here and {there} by {that} at {at}")
    }
}

/// Resolves the names of `spec` through `resolver` and builds the id maps,
/// reporting every problem rather than the first.
pub(super) fn resolve(spec: PolicySpec, resolver: &dyn Resolver) -> Result<Policy, PolicyError> {
    let mut diagnostics = Vec::new();
    let mut subjects: Vec<Option<Subject>> = vec![None; spec.entries.len()];
    // Allow entries before deny entries, each in file order: the later of
    // two duplicates and the [deny] side of a contradiction get the error,
    // as in `validate.rs`.
    let mut order: Vec<usize> = (0..spec.entries.len()).collect();
    order.sort_by_key(|&i| (spec.entries[i].action, spec.entries[i].at));
    // The ids each map is asked for, in that order, with their entries.
    let (mut uid_claims, mut gid_claims) = (Vec::new(), Vec::new());
    for i in order {
        let entry = &spec.entries[i];
        match subject(&entry.identity, resolver) {
            Ok(Some(subject)) => {
                subjects[i] = Some(subject);
                match subject {
                    Subject::Uid(id) => uid_claims.push((id, i)),
                    Subject::Gid(id) => gid_claims.push((id, i)),
                }
            }
            Ok(None) => {}
            Err(message) => diagnostics.push(Diagnostic {
                at: entry.at,
                message,
            }),
        }
    }
    let claimed = Claimed {
        spec: &spec,
        subjects: &subjects,
    };
    let uids = claimed.rules("uid", &uid_claims, &mut diagnostics);
    let gids = claimed.rules("gid", &gid_claims, &mut diagnostics);
    let cgroups = cgroups::resolve(&spec, resolver, &mut diagnostics);
    let members = members::denied_members(&spec, &gids, resolver, &mut diagnostics);
    if !diagnostics.is_empty() {
        return Err(PolicyError::invalid(&spec.path, diagnostics));
    }
    Ok(Policy {
        default_action: spec.default_action(),
        spec,
        uids,
        gids,
        members,
        cgroups,
    })
}

/// The entries of a policy and the id each stands for.
struct Claimed<'a> {
    spec: &'a PolicySpec,
    subjects: &'a [Option<Subject>],
}

impl Claimed<'_> {
    /// The rules of one map (`noun`: "uid" or "gid") from the ids its
    /// entries claim, in the order they are judged: the first claim of an
    /// id makes its rule, a later one is a duplicate or a contradiction.
    fn rules(
        &self,
        noun: &str,
        claims: &[(u32, usize)],
        diagnostics: &mut Vec<Diagnostic>,
    ) -> BTreeMap<u32, IdRule> {
        let rule = |i: usize| IdRule::new(self.spec.entries[i].action, i);
        let capacity = MAX_ID_RULES as usize;
        // Ids claimed in increasing order (a long list usually is) cannot
        // repeat: the map is built at once, its nodes full, in linear time.
        if claims.len() <= capacity && claims.is_sorted_by(|a, b| a.0 < b.0) {
            return claims.iter().map(|&(id, i)| (id, rule(i))).collect();
        }
        let mut map = BTreeMap::new();
        let mut full = false;
        for &(id, i) in claims {
            let len = map.len();
            match map.entry(id) {
                btree_map::Entry::Vacant(_) if len >= capacity => {
                    // Once per map: one message says it all.
                    if !full {
                        full = true;
                        diagnostics.push(Diagnostic {
                            at: self.spec.entries[i].at,
                            message: format!(
                                "too many {noun} rules: the kernel map holds at most {capacity}"
                            ),
                        });
                    }
                }
                btree_map::Entry::Vacant(slot) => {
                    slot.insert(rule(i));
                }
                btree_map::Entry::Occupied(slot) => {
                    let earlier = *slot.get();
                    diagnostics.push(Diagnostic {
                        at: self.spec.entries[i].at,
                        message: clash(self.spec, self.subjects, i, earlier),
                    });
                }
            }
        }
        map
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A user database for tests, so they do not depend on the host's.

    use std::collections::HashMap;

    use super::Resolver;

    /// Users, groups and units by name, and who is a member of which
    /// group; a name in `failing` makes the lookup fail (`"members"`: the
    /// lookup of members).
    #[derive(Debug, Default)]
    pub(crate) struct FakeResolver {
        pub(crate) users: HashMap<String, u32>,
        pub(crate) groups: HashMap<String, u32>,
        /// Units and their cgroups.
        pub(crate) units: HashMap<String, String>,
        /// `(uid, gid)`: the user is a member of the group.
        pub(crate) members: Vec<(u32, u32)>,
        pub(crate) failing: Vec<String>,
    }

    impl FakeResolver {
        pub(crate) fn new(users: &[(&str, u32)], groups: &[(&str, u32)]) -> Self {
            Self {
                users: users.iter().map(|&(n, id)| (n.to_owned(), id)).collect(),
                groups: groups.iter().map(|&(n, id)| (n.to_owned(), id)).collect(),
                units: HashMap::new(),
                members: Vec::new(),
                failing: Vec::new(),
            }
        }

        /// The same, with these memberships (`(uid, gid)`).
        pub(crate) fn with_members(mut self, members: &[(u32, u32)]) -> Self {
            self.members = members.to_vec();
            self
        }

        /// The same, knowing these units and their cgroups.
        pub(crate) fn with_units(mut self, units: &[(&str, &str)]) -> Self {
            self.units = units
                .iter()
                .map(|&(u, path)| (u.to_owned(), path.to_owned()))
                .collect();
            self
        }

        fn lookup(&self, table: &HashMap<String, u32>, name: &str) -> Result<Option<u32>, String> {
            if self.failing.iter().any(|f| f == name) {
                return Err("connection to the directory server timed out".to_owned());
            }
            Ok(table.get(name).copied())
        }
    }

    impl Resolver for FakeResolver {
        fn user_id(&self, name: &str) -> Result<Option<u32>, String> {
            self.lookup(&self.users, name)
        }

        fn group_id(&self, name: &str) -> Result<Option<u32>, String> {
            self.lookup(&self.groups, name)
        }

        fn user_name(&self, uid: u32) -> Option<String> {
            self.users
                .iter()
                .find(|&(_, &id)| id == uid)
                .map(|(name, _)| name.clone())
        }

        fn unit_cgroup(&self, unit: &str) -> Result<Option<String>, String> {
            if self.failing.iter().any(|f| f == unit) {
                return Err("Failed to connect to bus: No such file or directory".to_owned());
            }
            Ok(self.units.get(unit).cloned())
        }

        fn members(&self, gids: &[u32]) -> Result<Vec<(u32, u32)>, String> {
            if self.failing.iter().any(|f| f == "members") {
                return Err("connection to the directory server timed out".to_owned());
            }
            Ok(self
                .members
                .iter()
                .copied()
                .filter(|(_, gid)| gids.contains(gid))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests;

//! Who is a member of a denied group, as the group database says when the
//! policy is loaded: a `[deny]` on a group must also cover the user
//! namespaces its members create, which hold their creator's uid and
//! effective gid (`user_namespace.owner`, `.group`) and none of its
//! supplementary groups. A member with subordinate ids (`newgidmap` leaves
//! `setgroups` allowed) drops the group inside, or takes a subordinate gid
//! as its primary one; the programs then find its membership by the
//! namespace's creator.
//!
//! A member is a user whose primary group (passwd) is the group, or whom
//! the group lists (`/etc/group`, through NSS). A membership made later
//! counts from the next reload, as a name does. The lookups happen here,
//! once per load; [`SystemResolver`](super::SystemResolver) makes them
//! through NSS ([`system_members`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, PoisonError},
};

use imds_guard_common::MAX_ID_RULES;
use nix::{
    errno::Errno,
    unistd::{Gid, Group, User},
};

use super::{Action, Diagnostic, IdRule, PolicySpec, Resolver};

/// The users who are members of a denied gid of `gids`, each with the
/// lowest denied gid it is a member of (the one the programs name, as the
/// scan of a caller's own groups names its lowest denied one). A lookup
/// that fails refuses the policy at the first denied group's entry: a deny
/// left partly unenforced would fail open.
pub(super) fn denied_members(
    spec: &PolicySpec,
    gids: &BTreeMap<u32, IdRule>,
    resolver: &dyn Resolver,
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<u32, u32> {
    let denied: Vec<(u32, usize)> = gids
        .iter()
        .filter(|(_, rule)| rule.action == Action::Deny)
        .map(|(&gid, rule)| (gid, rule.entry()))
        .collect();
    let Some(&(_, first)) = denied
        .iter()
        .min_by_key(|&&(_, index)| spec.entries[index].at)
    else {
        return BTreeMap::new();
    };
    let at = spec.entries[first].at;
    let wanted: Vec<u32> = denied.iter().map(|&(gid, _)| gid).collect();
    let pairs = match resolver.members(&wanted) {
        Ok(pairs) => pairs,
        Err(cause) => {
            diagnostics.push(Diagnostic {
                at,
                message: format!(
                    "cannot read the members of the denied groups, which a deny covers in the \
                     user namespaces they create: {cause}"
                ),
            });
            return BTreeMap::new();
        }
    };
    let mut members: BTreeMap<u32, u32> = BTreeMap::new();
    let is_denied = |gid: u32| gids.get(&gid).is_some_and(|r| r.action == Action::Deny);
    for (uid, gid) in pairs.into_iter().filter(|&(_, gid)| is_denied(gid)) {
        members
            .entry(uid)
            .and_modify(|lowest| *lowest = (*lowest).min(gid))
            .or_insert(gid);
    }
    let capacity = MAX_ID_RULES as usize;
    if members.len() > capacity {
        diagnostics.push(Diagnostic {
            at,
            message: format!(
                "the denied groups have {} members, and the kernel map of members holds at most \
                 {capacity}",
                members.len()
            ),
        });
    }
    members
}

/// The members of each gid of `gids` as NSS has them: `(uid, gid)` for
/// every user whose primary group it is (every user NSS enumerates, see
/// [`users`]) and every user its entry lists. A listed name that is no
/// user is nobody to deny; a failed lookup is an error.
pub(super) fn system_members(gids: &[u32]) -> Result<Vec<(u32, u32)>, String> {
    let wanted: BTreeSet<u32> = gids.iter().copied().collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs: BTreeSet<(u32, u32)> = users()?
        .into_iter()
        .filter(|(_, gid)| wanted.contains(gid))
        .collect();
    for &gid in &wanted {
        let group = match Group::from_gid(Gid::from_raw(gid)) {
            Ok(Some(group)) => group,
            Ok(None) | Err(Errno::ENOENT | Errno::ESRCH) => continue,
            Err(e) => return Err(format!("cannot look up gid {gid}: {e}")),
        };
        for name in &group.mem {
            match User::from_name(name) {
                Ok(Some(user)) => {
                    pairs.insert((user.uid.as_raw(), gid));
                }
                Ok(None) | Err(Errno::ENOENT | Errno::ESRCH) => {}
                Err(e) => return Err(format!("cannot look up user {name:?}: {e}")),
            }
        }
    }
    Ok(pairs.into_iter().collect())
}

/// Every user NSS enumerates (`getpwent(3)`), as (uid, primary gid). A
/// directory that does not enumerate (SSSD's default) gives only its local
/// users here: its members are then found by the groups that list them.
fn users() -> Result<Vec<(u32, u32)>, String> {
    // `getpwent` keeps its position in libc's global state: one
    // enumeration at a time in this process (nothing else of ours calls
    // it).
    static ENUMERATING: Mutex<()> = Mutex::new(());
    let _one = ENUMERATING.lock().unwrap_or_else(PoisonError::into_inner);
    let mut users = Vec::new();
    // SAFETY: rewinds the enumeration; no pointers.
    unsafe { libc::setpwent() };
    let end = loop {
        Errno::clear();
        // SAFETY: the result is NULL or points at libc's static entry,
        // valid until the next call, which is after the copy below; the
        // lock keeps our other threads from making that call meanwhile.
        let entry = unsafe { libc::getpwent() };
        if entry.is_null() {
            break Errno::last();
        }
        // SAFETY: non-null, as above.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        users.push((uid, gid));
    };
    // SAFETY: closes the enumeration; no pointers.
    unsafe { libc::endpwent() };
    match end {
        // The end: no error, or the "not found" some modules say for it
        // (as `getpwnam_r` does, see `resolve.rs`).
        Errno::UnknownErrno | Errno::ENOENT | Errno::ESRCH => Ok(users),
        e => Err(format!("cannot list the users: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_enumerates_root_with_its_primary_group() {
        let users = users().unwrap_or_else(|e| panic!("{e}"));
        assert!(users.contains(&(0, 0)), "{users:?}");
        let root = system_members(&[0]).unwrap_or_else(|e| panic!("{e}"));
        assert!(root.contains(&(0, 0)), "{root:?}");
        assert!(system_members(&[]).is_ok_and(|m| m.is_empty()));
    }
}

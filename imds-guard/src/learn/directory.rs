//! What `suggest` asks of the user database: names for messages, and
//! group membership read the way the policy reads it (`members.rs`): a
//! user is a member of its primary group (passwd) and of every group
//! whose entry lists it.

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use crate::policy::{Resolver as _, SystemResolver};

/// Names and memberships.
pub trait Directory {
    fn user_name(&self, uid: u32) -> Option<String>;
    fn group_name(&self, gid: u32) -> Option<String>;
    /// The groups `uid` is a member of (its primary group included).
    fn groups_of(&self, uid: u32) -> Result<Vec<u32>, String>;
    /// The members of `gid`.
    fn members(&self, gid: u32) -> Result<Vec<u32>, String>;
}

/// The host's database, through NSS.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemDirectory;

impl Directory for SystemDirectory {
    fn user_name(&self, uid: u32) -> Option<String> {
        SystemResolver.user_name(uid)
    }

    fn group_name(&self, gid: u32) -> Option<String> {
        Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    }

    fn groups_of(&self, uid: u32) -> Result<Vec<u32>, String> {
        let user = match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(user)) => user,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot look up uid {uid}: {e}")),
        };
        let name = std::ffi::CString::new(user.name.as_bytes())
            .map_err(|_| format!("the name of uid {uid} holds a NUL"))?;
        // getgrouplist(3) is initgroups' list: the primary group and every
        // group whose entry names the user.
        let groups = getgrouplist(&name, user.gid)
            .map_err(|e| format!("cannot list the groups of {}: {e}", user.name))?;
        Ok(groups.into_iter().map(Gid::as_raw).collect())
    }

    fn members(&self, gid: u32) -> Result<Vec<u32>, String> {
        SystemResolver
            .members(&[gid])
            .map(|pairs| pairs.into_iter().map(|(uid, _)| uid).collect())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A user database for tests.

    use super::Directory;

    /// Users `(uid, name, primary gid)`, groups `(gid, name, listed uids)`.
    #[derive(Debug, Default)]
    pub(crate) struct FakeDirectory {
        pub(crate) users: Vec<(u32, &'static str, u32)>,
        pub(crate) groups: Vec<(u32, &'static str, Vec<u32>)>,
    }

    impl Directory for FakeDirectory {
        fn user_name(&self, uid: u32) -> Option<String> {
            self.users
                .iter()
                .find(|u| u.0 == uid)
                .map(|u| u.1.to_owned())
        }

        fn group_name(&self, gid: u32) -> Option<String> {
            self.groups
                .iter()
                .find(|g| g.0 == gid)
                .map(|g| g.1.to_owned())
        }

        fn groups_of(&self, uid: u32) -> Result<Vec<u32>, String> {
            let primary = self.users.iter().filter(|u| u.0 == uid).map(|u| u.2);
            let listed = self
                .groups
                .iter()
                .filter(|g| g.2.contains(&uid))
                .map(|g| g.0);
            Ok(primary.chain(listed).collect())
        }

        fn members(&self, gid: u32) -> Result<Vec<u32>, String> {
            let primary = self.users.iter().filter(|u| u.2 == gid).map(|u| u.0);
            let listed = self
                .groups
                .iter()
                .filter(|g| g.0 == gid)
                .flat_map(|g| g.2.iter().copied());
            let mut all: Vec<u32> = primary.chain(listed).collect();
            all.sort_unstable();
            all.dedup();
            Ok(all)
        }
    }
}

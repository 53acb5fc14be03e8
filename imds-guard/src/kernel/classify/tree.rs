//! The cgroup hierarchy as the agent knows it: each cgroup's name and
//! parent, by id, from listings and the programs' events. A path is put
//! together from the names when it is needed (a record, a classification),
//! so that learning of a cgroup costs one name whatever the length of its
//! path: a path longer than the tracepoint's 1,023 bytes used to cost a
//! walk of the whole hierarchy.

use std::collections::HashMap;

use super::scan::Found;

/// Cgroups the tree holds at most: the classification map's own bound,
/// so that a user making cgroups cannot make the agent's memory grow past
/// it (names are at most 255 bytes).
pub(crate) const MAX_NODES: usize = imds_guard_common::MAX_CGROUPS as usize;

/// Levels a path is put together from at most: deeper, it is not named.
const MAX_WALK: usize = 1024;

/// One cgroup: its parent's id and its own name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    parent: u64,
    name: Box<[u8]>,
}

/// Cgroups by id, below a root whose path is `/`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tree {
    root: u64,
    nodes: HashMap<u64, Node>,
}

impl Tree {
    /// An empty tree under the root cgroup `root`.
    pub(crate) fn new(root: u64) -> Self {
        Self {
            root,
            nodes: HashMap::new(),
        }
    }

    /// The tree of a listing (its first entry is the root).
    pub(crate) fn of(listed: &[Found]) -> Self {
        let mut tree = Self::new(listed.first().map_or(0, |f| f.id));
        for f in listed.iter().skip(1) {
            tree.insert(f.id, f.parent, f.name());
        }
        tree
    }

    /// Cgroups held, the root not counted.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        id == self.root || self.nodes.contains_key(&id)
    }

    /// Learns cgroup `id`, named `name` below `parent`; `false` when the
    /// tree is full.
    pub(crate) fn insert(&mut self, id: u64, parent: u64, name: &[u8]) -> bool {
        if self.nodes.len() >= MAX_NODES && !self.nodes.contains_key(&id) {
            return false;
        }
        let node = Node {
            parent,
            name: name.into(),
        };
        self.nodes.insert(id, node);
        true
    }

    pub(crate) fn remove(&mut self, id: u64) {
        self.nodes.remove(&id);
    }

    /// The ids held, the root not included.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.keys().copied()
    }

    /// The path of cgroup `id` from the root (`/` for the root itself);
    /// `None` when a cgroup on the way up is unknown (an event lost) or the
    /// path is deeper than [`MAX_WALK`].
    pub(crate) fn path(&self, id: u64) -> Option<Vec<u8>> {
        if id == self.root {
            return Some(b"/".to_vec());
        }
        let mut names = Vec::new();
        let mut at = id;
        while at != self.root {
            if names.len() >= MAX_WALK {
                return None;
            }
            let node = self.nodes.get(&at)?;
            names.push(&node.name);
            at = node.parent;
        }
        let mut path = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for name in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: u64, parent: u64, path: &str) -> Found {
        Found {
            id,
            parent,
            path: path.as_bytes().to_vec(),
            uid: 0,
        }
    }

    #[test]
    fn paths_are_put_together_from_names_up_to_the_root() {
        let tree = Tree::of(&[
            found(1, 0, "/"),
            found(2, 1, "/user.slice"),
            found(3, 2, "/user.slice/user-1000.slice"),
        ]);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.path(1).as_deref(), Some(b"/".as_slice()));
        assert_eq!(tree.path(2).as_deref(), Some(b"/user.slice".as_slice()));
        assert_eq!(
            tree.path(3).as_deref(),
            Some(b"/user.slice/user-1000.slice".as_slice())
        );
        assert_eq!(tree.path(4), None, "never seen");
    }

    #[test]
    fn a_path_longer_than_the_tracepoints_costs_one_name_per_cgroup() {
        let mut tree = Tree::new(1);
        let name = vec![b'n'; 250];
        for id in 2..=6 {
            assert!(tree.insert(id, id - 1, &name));
        }
        let path = tree.path(6).expect("known");
        assert_eq!(path.len(), 5 * 251, "past 1,023 bytes");
        assert!(path.starts_with(b"/nnn"));
    }

    #[test]
    fn a_lost_parent_leaves_the_path_unknown_until_it_is_learned() {
        let mut tree = Tree::new(1);
        tree.insert(3, 2, b"child");
        assert_eq!(tree.path(3), None);
        tree.insert(2, 1, b"parent");
        assert_eq!(tree.path(3).as_deref(), Some(b"/parent/child".as_slice()));
        tree.remove(2);
        assert_eq!(tree.path(3), None);
        assert!(tree.contains(1) && tree.contains(3) && !tree.contains(2));
    }

    #[test]
    fn a_loop_of_parents_ends() {
        let mut tree = Tree::new(1);
        tree.insert(2, 3, b"a");
        tree.insert(3, 2, b"b");
        assert_eq!(tree.path(2), None);
    }
}

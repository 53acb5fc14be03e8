//! What holds the forward path as the agent last put it in force, and the
//! reload thread is lent: the mechanism, whether it holds, and for
//! nftables the unowned table's ruleset and digest and the agent's own
//! table. [`ForwardTable::apply`] is what every reload runs.

use std::sync::{Arc, Mutex, PoisonError};

use imds_guard_common::{ForwardState, forward_flags, mechanism};

use crate::{
    chain::Chain,
    kernel::forward::{
        self,
        owned::{OwnedError, OwnedTable},
    },
    policy::PolicySpec,
};

/// Which mechanism `run` is told to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// The netfilter program where the kernel has it, nftables elsewhere.
    #[default]
    Auto,
    /// nftables even where the netfilter program exists (tests of the
    /// older kernels' mechanism on a newer one).
    Nftables,
}

/// What holds the forward path.
#[derive(Clone)]
pub(super) enum Mechanism {
    Netfilter,
    Nftables {
        /// The agent's own table, `None` where the kernel has no owner
        /// flag (before 5.12) or it could not be written.
        owner: Option<Arc<Mutex<OwnedTable>>>,
        /// The kernel refused the owner flag.
        no_owner: bool,
        forced: bool,
    },
}

/// The forward path as last put in force (or not): what the reload thread
/// is lent and hands back.
#[derive(Clone)]
pub(in crate::daemon) struct ForwardTable {
    pub(super) mechanism: Mechanism,
    /// Why the forward path is open, if it is.
    pub(super) unguarded: Option<String>,
    /// The unowned table's ruleset and its digest as the kernel listed it
    /// (nftables only).
    pub(super) ruleset: Option<String>,
    pub(super) digest: Option<[u8; 32]>,
}

impl ForwardTable {
    /// Puts the forward path of `spec` in force again: for nftables both
    /// tables, always (a reload must put back what was flushed even when
    /// the policy did not change); for the netfilter program nothing, the
    /// reload's generation flip carries its exceptions.
    pub(in crate::daemon) fn apply(&self, spec: &PolicySpec) -> Self {
        let mut next = self.clone();
        if let Mechanism::Nftables { owner, .. } = &self.mechanism {
            next.unguarded = None;
            next.put_tables(spec, owner.as_ref());
        }
        next
    }

    /// Both nftables tables for `spec`: the unowned one, then the agent's.
    pub(super) fn put_tables(&mut self, spec: &PolicySpec, owner: Option<&Arc<Mutex<OwnedTable>>>) {
        let ruleset = forward::ruleset(spec);
        match forward::apply_ruleset(&ruleset).and_then(|()| forward::table_digest()) {
            Ok(digest) => {
                self.ruleset = Some(ruleset);
                self.digest = digest;
            }
            Err(e) => self.fail(&Chain(&e).to_string()),
        }
        if let Some(owner) = owner {
            let put = owner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put(spec);
            if let Err(e) = put {
                tracing::error!(
                    forward = "owned",
                    "the agent's own forward table could not be put in force: {}; a foreign \
                     flush opens the forward path until the agent puts the table back",
                    Chain(&e)
                );
            }
        }
    }

    /// Said at error level: the forward path is open.
    pub(super) fn fail(&mut self, why: &str) {
        tracing::error!(
            forward = "unguarded",
            "forwarded packets to the metadata service are NOT dropped: {why}"
        );
        self.unguarded = Some(why.to_owned());
    }

    pub(in crate::daemon) fn is_guarded(&self) -> bool {
        self.unguarded.is_none()
    }

    /// What holds the forward path, for the `ready` record and `status`.
    pub(in crate::daemon) fn mechanism(&self) -> &'static str {
        match self.mechanism {
            Mechanism::Netfilter => "netfilter",
            Mechanism::Nftables { .. } => "nftables",
        }
    }

    /// For systemd's status line and the records: empty when guarded.
    pub(in crate::daemon) fn note(&self) -> &'static str {
        if self.is_guarded() {
            ""
        } else {
            "; forward path NOT guarded"
        }
    }

    /// What `status` is told of it (`FWD_STATE`).
    pub(super) fn state(&self) -> ForwardState {
        let (mechanism, flags) = match &self.mechanism {
            _ if !self.is_guarded() => (mechanism::NONE, 0),
            Mechanism::Netfilter => (mechanism::NETFILTER, 0),
            Mechanism::Nftables {
                no_owner, forced, ..
            } => {
                let mut flags = 0;
                if *no_owner {
                    flags |= forward_flags::NO_OWNER;
                }
                if *forced {
                    flags |= forward_flags::FORCED;
                }
                (mechanism::NFTABLES, flags)
            }
        };
        ForwardState {
            mechanism,
            flags,
            table_digest: self.digest.unwrap_or_default(),
        }
    }
}

/// Writes the agent's own table; `false` (said) when it cannot be.
pub(super) fn own(owner: &Arc<Mutex<OwnedTable>>, spec: &PolicySpec) -> bool {
    let put = owner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .put(spec);
    match put {
        Ok(()) => true,
        Err(OwnedError::Unsupported) => {
            tracing::warn!(
                forward = "no_owner",
                "this kernel cannot give the agent's forward table an owner (NFT_TABLE_F_OWNER, \
                 Linux 5.12): a foreign `nft flush ruleset` opens the forward path until the \
                 agent puts the table back, as soon as nf_tables says so"
            );
            false
        }
        Err(e) => {
            tracing::error!(
                forward = "owned",
                "the agent's own forward table could not be put in force: {}",
                Chain(&e)
            );
            false
        }
    }
}

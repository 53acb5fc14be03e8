//! imds-guard: decides which local processes may reach the cloud instance
//! metadata service. The binary (`main.rs`) is a thin CLI over these modules.

pub mod cgroup;
pub mod check;
pub mod cli;
pub mod events;
pub mod generate;
pub mod guard;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pins;
pub mod policy;
pub mod ratelimit;
pub mod render;
pub mod run;
pub mod status;
pub mod sys;

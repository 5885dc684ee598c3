//! The nvtier testbed library: bring-up of the emulated tiers and shaped
//! registry (the scripts next to this crate), the reading side of
//! `nvtier pull --json`, and the benchmark reports. Used by the `nvbench`
//! binary and by the driver's integration tests.

pub mod bed;
pub mod proc;
pub mod pull_report;
pub mod reports;
pub mod testbed;

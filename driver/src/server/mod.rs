//! Engine integrations.

pub mod docker_plugin;

//! One module per command: its flags (`Args`) and `run`.

pub mod docker_plugin;
pub mod gc;
pub mod images;
pub mod layers;
pub mod migrate;
pub mod mount;
pub mod profile;
pub mod pull;
pub mod repair;
pub mod rm;
pub mod run;
pub mod serve;
pub mod status;
pub mod sync;
pub mod trace;
pub mod umount;

//! ralph-core: what every layer of ralph-deploy shares. The model (kind
//! descriptors, the kind catalogue, settings), the driver interface that
//! the cloud crates implement, a plan's [`change::Change`], progress
//! events, the resource graph, and the bounds on remote calls.
//!
//! Crates, bottom up (ARCHITECTURE.md has the map): ralph-core ->
//! ralph-stack (load and validate YAML) and the driver crates (ralph-aws,
//! ralph-gcp, ralph-service), which never import each other's layer ->
//! ralph-engine (plan, apply, state, every command's operations) ->
//! ralph-deploy (the command line).

pub mod change;
pub mod download;
pub mod driver;
pub mod events;
pub mod files;
pub mod graph;
pub mod model;
pub mod remote;

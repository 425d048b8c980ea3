//! ralph-deploy: infrastructure as code for the Ralph Orchestrator.
//!
//! The flow, one module per stage:
//! [`stack`] (load and validate YAML) -> [`graph`] (dependency DAG) ->
//! [`plan`] (refresh and diff) -> [`apply`] (parallel walk) -> [`state`].
//! [`drivers`] hold one implementation per resource kind; [`kinds`] the
//! descriptors they share with validation; [`cli`] is the only layer that
//! prints.

pub mod apply;
pub mod cli;
pub mod drivers;
pub mod events;
pub mod files;
pub mod graph;
pub mod kinds;
pub mod plan;
pub mod stack;
pub mod state;

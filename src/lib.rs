//! ralph-deploy: infrastructure as code for the Ralph Orchestrator.
//!
//! Layers, bottom up (ARCHITECTURE.md has the map):
//! [`model`] (kind descriptors, the kind catalogue, settings) ->
//! [`stack`] (load and validate YAML) and [`drivers`] (one implementation
//! per resource kind), which never import each other ->
//! [`graph`], [`plan`] (refresh and diff), [`apply`] (parallel walk),
//! [`state`] -> [`ops`] (every command's work, through one locked runner) ->
//! [`cli`] (parses arguments and prints; the only layer that prints).

// Every `println!`/`print!` of the crate goes through `cli::out`, which a
// reader that closed the pipe cannot turn into a panic or a kill.
macro_rules! println {
    () => {
        $crate::cli::out::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*), true)
    };
}
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!($($arg)*), false)
    };
}

pub mod apply;
pub mod check;
pub mod cli;
pub mod download;
pub mod drivers;
pub mod events;
pub mod files;
pub mod graph;
pub mod model;
pub mod ops;
pub mod plan;
pub mod remote;
pub mod stack;
pub mod state;
#[cfg(test)]
mod testing;

/// The kind descriptors, at their former path.
pub use model::kinds;

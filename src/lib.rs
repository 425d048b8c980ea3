//! ralph-deploy: infrastructure as code for the Ralph Orchestrator.
//!
//! This crate is the command line ([`cli`]: parses arguments and prints;
//! the only layer that prints). The work is in the workspace's crates,
//! bottom up (ARCHITECTURE.md has the map): ralph-core (the model, the
//! driver interface, events, the graph) -> ralph-stack (load and validate
//! YAML) and the driver crates ralph-aws, ralph-gcp and ralph-service,
//! which never import each other's layer -> ralph-engine (plan, apply,
//! state, and every command's work through one locked runner) -> here.
//! The command line reaches drivers only through ralph-engine: it does not
//! depend on a driver crate, so an import of one does not build.

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

pub mod cli;

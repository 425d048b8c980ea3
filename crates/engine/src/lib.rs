//! ralph-engine: plan (refresh and diff), apply (the parallel walk),
//! state (local, S3, PostgreSQL), `check`, and every command's work in
//! [`ops`], through one locked runner. It knows the built-in drivers
//! ([`registry`]) but names no cloud outside that list.

pub mod apply;
pub mod check;
pub mod ops;
pub mod plan;
pub mod state;
#[cfg(test)]
mod testing;

use ralph_core::driver::Registry;

/// Every built-in kind's driver.
pub fn registry() -> Registry {
    let mut drivers = ralph_aws::drivers();
    drivers.extend(ralph_gcp::drivers());
    drivers.extend(ralph_service::drivers());
    Registry::from_drivers(drivers)
}

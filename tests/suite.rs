//! The integration tests, one binary: every file beside this one is a module
//! of it, named after the file (`scripts/test` runs a module with the filter
//! `NAME::`, so no module's name may end with another's). One binary links
//! once and compiles `common` once, where a binary per file linked 28 times.
//! `cargo test --test suite kubernetes::` runs one file's tests.

mod common;

mod addons;
mod aws_crash;
mod aws_network;
mod aws_production;
mod aws_waiting;
mod backup;
mod check;
mod ci_examples;
mod completions;
mod crash_s3;
mod failover;
mod first_hour;
mod gcp_conformance;
mod gcp_crash;
mod gcp_production;
mod hardening;
mod invalid_stacks;
mod kubernetes;
mod local_cloud;
mod migrations;
mod monitoring;
mod ops_names;
mod plan_formats;
mod progress;
mod selection;
mod stack_language;
mod state_backends;
mod working_service;

//! rndc-warden keeps BIND9 RNDC keys safe on Kubernetes clusters that run the Bindy operator
//! (`bindy.firestoned.io`): an admission webhook that defaults and validates RNDC key settings, a
//! leader-elected rotator that provisions and rotates keys, and CLI commands over the same rules.
//!
//! # Layout
//! - [`api`]: the `Bind9Instance` / `Bind9Cluster` types, status and annotation keys.
//! - [`policy`]: the pure rules (durations, algorithms, precedence, defaulting, validation,
//!   `rndc.key`, annotation stamping, the rotation schedule). No I/O, no clock, no randomness.
//! - [`config`]: command-line and environment settings shared by every front end.
//! - [`check`]: the offline `check` command for CI and GitOps pipelines.
//! - [`cli`]: the command line and the dispatch to each command.
//! - [`telemetry`]: logging setup.

pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod policy;
pub mod telemetry;

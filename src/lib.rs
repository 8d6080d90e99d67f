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
//! - [`admission`]: the HTTPS admission server (router, policy adapter, TLS, accept loop) and its
//!   self-managed serving certificates (Secret, caBundle, renewal).
//! - [`cache`]: watch caches that answer admission lookups without API calls.
//! - [`serve`]: the `serve` command wiring admission, probes, caches and the rotator together.
//! - [`probe`] and [`metrics`]: the plain-HTTP probe port and the Prometheus metrics.
//! - [`cli`]: the command line and the dispatch to each command.
//! - [`telemetry`]: logging setup.

pub mod admission;
pub mod api;
pub mod audit;
pub mod cache;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod rotate;
pub mod rotation;
pub mod serve;
pub mod telemetry;

//! rndc-warden keeps BIND9 RNDC keys safe on Kubernetes clusters that run the Bindy operator
//! (`bindy.firestoned.io`): an admission webhook that defaults and validates RNDC key settings, a
//! leader-elected rotator that provisions and rotates keys, and CLI commands over the same rules.
//!
//! # Layout
//! Imports point down this list's groups, never back up (docs/development.md, "Layout").
//!
//! Commands (one module each, dispatched by [`cli`]):
//! - [`check`]: offline `check` for CI and GitOps pipelines (input, evaluation, rendering).
//! - [`audit`]: the compliance report; [`rotate`]: the manual trigger.
//! - [`serve`]: wires admission, probes, caches and the rotator together; reads the
//!   environment and the clock once.
//!
//! Adapters:
//! - [`admission`]: the HTTPS admission server (router, policy adapter, accept loop), its TLS
//!   and self-managed serving certificates.
//! - [`cache`]: watch caches that answer admission lookups without API calls, and the one
//!   watch loop of the process.
//! - [`rotation`]: the leader-elected rotator and reloader (scheduler, reconcile, reloader,
//!   context and caches; pure planning in `plan`, `reload`, `naming`).
//! - [`probe`] and [`metrics`]: the plain-HTTP probe port and the Prometheus metrics.
//! - [`telemetry`]: logging setup.
//!
//! Core:
//! - [`policy`]: the pure rules (durations, algorithms, precedence, defaulting, validation,
//!   `rndc.key`, annotation stamping, the rotation schedule and rate limit). No I/O, no clock,
//!   no randomness.
//! - [`api`]: the `Bind9Instance` / `Bind9Cluster` types, status and annotation keys.
//! - [`config`]: settings shared by every front end; [`clock`]: the injected clock.

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

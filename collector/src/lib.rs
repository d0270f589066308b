//! Tangle's collector: takes spans (from agents and from any
//! OpenTelemetry-instrumented application), assembles traces, and finds the
//! couplings of a distributed monolith in them.
//!
//! - [`span`]: the span the collector keeps;
//! - [`assembly`]: spans into complete traces, over a window, bounded;
//! - [`chains`]: one trace's synchronous chains, depth, closure, fan-out,
//!   cycles, error propagation and database access;
//! - [`baseline`]: chain signatures seen before, kept across restarts, so
//!   that a new synchronous chain is reported once;
//! - [`intake`]: the OTLP receivers, and what they refuse;
//! - [`ingest`]: the thread that puts spans into the model;
//! - [`model`]: services, edges, chains and databases, counted;
//! - [`findings`]: the rules that make the model's measurements findings;
//! - [`names`]: names bounded, the excess folded into `{other}`;
//! - [`api`]: what the JSON API answers, as types;
//! - [`web`]: the coupling map in a browser, embedded, at `/`.

pub mod api;
pub mod assembly;
pub mod baseline;
pub mod chains;
pub mod config;
pub mod findings;
pub mod ingest;
pub mod intake;
pub mod metrics;
pub mod model;
pub mod names;
pub mod report;
pub mod server;
pub mod span;
pub mod web;

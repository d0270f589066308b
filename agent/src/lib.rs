//! Tangle's per-node agent: loads the eBPF programs, follows every TCP
//! connection on the node and the bytes on it.
//!
//! - [`probe`] loads and attaches the kernel side and reads its counters;
//! - [`reader`] turns ring buffer records into events with their connection;
//! - [`conntrack`] keeps who owns each connection;
//! - [`identity`] names the service a process is (with [`kubernetes`]);
//! - [`pipeline`] parses each connection's transfers into exchanges;
//! - [`export`] is the span queue: on the capture thread each exchange
//!   becomes a compact span record ([`spans`]) and is linked to the request
//!   it serves ([`link`]); the export thread encodes spans as OTLP
//!   ([`otlp`]) and sends them to the collector;
//! - [`metrics`] serves the agent's own counters to Prometheus;
//! - [`own_traffic`] says what is Tangle's own, never traced;
//! - [`privileges`] drops what the agent no longer needs once attached;
//! - [`config`] reads `run`'s configuration file;
//! - [`output`] prints events and exchanges for the CLI;
//! - [`replay`] runs the protocol parsers over a pcap file.

pub mod btf;
pub mod config;
pub mod conntrack;
pub mod events;
pub mod export;
pub mod identity;
pub mod kubernetes;
pub mod link;
pub mod metrics;
pub mod otlp;
pub mod output;
pub mod own_traffic;
pub mod pipeline;
pub mod privileges;
pub mod probe;
pub mod reader;
pub mod replay;
pub mod spans;

//! Tangle's per-node agent: loads the eBPF programs, follows every TCP
//! connection on the node and the bytes on it. Its modules are the stages
//! of the pipeline, in order:
//!
//! - [`capture`]: the kernel side loaded and attached ([`capture::probe`],
//!   [`capture::btf`]), its ring buffer read ([`capture::ring`]) and its
//!   records decoded ([`capture::events`]); what is Tangle's own and never
//!   traced ([`capture::own_traffic`]);
//! - [`connections`]: the one table of live connections, each with who
//!   owns it, both addresses, its role and its parsers' state;
//! - [`identity`]: the service a process is (with
//!   [`identity::kubernetes`]), resolved off the capture thread;
//! - [`exchanges`]: each connection's transfers parsed into exchanges;
//! - [`link`]: outbound calls linked to the requests they serve;
//! - [`spans`]: the compact span record each exchange becomes;
//! - [`export`]: the queue to the export thread, which encodes spans as
//!   OTLP ([`export::otlp`]) and sends them to the collector;
//! - [`metrics`]: the agent's own counters, served to Prometheus from a
//!   thread of its own.
//!
//! Beside them: [`privileges`] drops what the agent no longer needs once
//! attached; [`config`] reads `run`'s configuration file; [`output`] prints
//! events and exchanges for the CLI; [`replay`] runs the protocol parsers
//! over a pcap file.

pub mod capture;
pub mod config;
pub mod connections;
pub mod exchanges;
pub mod export;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod output;
pub mod privileges;
pub mod replay;
pub mod spans;

//! Tangle's per-node agent: loads the eBPF programs, follows every TCP
//! connection on the node and the bytes on it.
//!
//! - [`probe`] loads and attaches the kernel side and reads its counters;
//! - [`reader`] turns ring buffer records into events with their connection;
//! - [`conntrack`] keeps who owns each connection;
//! - [`pipeline`] parses each connection's transfers into exchanges;
//! - [`output`] prints events and exchanges for the CLI;
//! - [`replay`] runs the protocol parsers over a pcap file.

pub mod btf;
pub mod conntrack;
pub mod events;
pub mod export;
pub mod output;
pub mod pipeline;
pub mod probe;
pub mod reader;
pub mod replay;

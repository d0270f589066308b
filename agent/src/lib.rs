//! Tangle's per-node agent: loads the eBPF programs, follows every TCP
//! connection on the node and the bytes on it.
//!
//! - [`probe`] loads and attaches the kernel side and reads its counters;
//! - [`reader`] turns ring buffer records into events with their connection;
//! - [`conntrack`] keeps who owns each connection;
//! - [`output`] prints them for `tangle-agent capture`;
//! - [`replay`] runs the protocol parsers over a pcap file.

pub mod btf;
pub mod conntrack;
pub mod events;
pub mod output;
pub mod probe;
pub mod reader;
pub mod replay;

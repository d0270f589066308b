//! The kernel side and what comes out of it: the eBPF programs loaded and
//! attached, their ring buffer read, its records decoded.

pub mod btf;
pub mod events;
pub mod own_traffic;
pub mod probe;
pub mod ring;

//! Empty on the host: the programs are the `tangle-agent-ebpf` binary, built
//! for the BPF target by `tangle-agent`'s build script. This library target
//! lets `tangle-agent` name this crate as a build dependency, so cargo
//! rebuilds the programs when they change.
#![no_std]

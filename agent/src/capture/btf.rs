//! Reads the kernel's BTF to find the struct member offsets the eBPF side
//! needs: a socket's network namespace and TCP sequence numbers, and where
//! `pt_regs` holds the syscall registers (there is no CO-RE for our
//! programs, so the agent does the relocation itself, once, at start).

use std::{collections::HashMap, path::Path};

use tangle_common::KernelOffsets;

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// An error reading the kernel's BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read (no `CONFIG_DEBUG_INFO_BTF`, or no permission).
    #[error("cannot read kernel BTF at {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not BTF, or is cut short.
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    /// A struct the agent needs is not described.
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    /// A member the agent needs is not in its struct.
    #[error("kernel BTF has no member `{member}` in struct `{ty}`")]
    NoMember { ty: String, member: String },
    /// A member is a bitfield, which the eBPF side cannot read as a whole.
    #[error("member `{member}` of struct `{ty}` is a bitfield")]
    Bitfield { ty: String, member: String },
    /// Structs are laid out otherwise than the eBPF side reads them.
    #[error("kernel struct layout not supported: {0}")]
    Layout(&'static str),
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits; with `kind_flag`, the low 24 bits.
    offset: u32,
    bitfield: bool,
}

#[derive(Default)]
struct Type {
    kind: u32,
    members: Vec<Member>,
}

/// The struct types of a BTF blob (other kinds are skipped but stepped over).
pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id (0 is void).
    types: Vec<Type>,
    by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (the only byte order this agent runs on).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut btf = Self {
            strings,
            types: vec![Type::default()],
            by_name: HashMap::new(),
        };
        let mut at = 0;
        while at < types_sec.len() {
            let name_off = u32_at(types_sec, at)?;
            let info = u32_at(types_sec, at + 4)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut ty = Type {
                kind,
                members: Vec::new(),
            };
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(types_sec, m + 8)?;
                        ty.members.push(Member {
                            name_off: u32_at(types_sec, m)?,
                            type_id: u32_at(types_sec, m + 4)?,
                            offset: if kind_flag { raw & 0xff_ffff } else { raw },
                            bitfield: kind_flag && raw >> 24 != 0,
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12,      // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, modifiers, FUNC, FLOAT, TYPE_TAG
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at += extra;
            if kind == KIND_STRUCT && name_off != 0 {
                let name = btf.name(name_off).to_owned();
                // The first definition wins; vmlinux has one of each.
                btf.by_name.entry(name).or_insert(btf.types.len() as u32);
            }
            btf.types.push(ty);
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(rest.get(..end).unwrap_or_default()).unwrap_or("")
    }

    /// Byte offset of `member` in struct `ty`, looking inside anonymous
    /// structs and unions as C does.
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(ty)
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
        match self.find(id, member, 0, 0)? {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::Bitfield {
                ty: ty.to_owned(),
                member: member.to_owned(),
            }),
            None => Err(BtfError::NoMember {
                ty: ty.to_owned(),
                member: member.to_owned(),
            }),
        }
    }

    fn find(&self, id: u32, member: &str, base: u32, depth: u32) -> Result<Option<u32>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        let Some(ty) = self.types.get(id as usize) else {
            return Ok(None);
        };
        for m in &ty.members {
            if m.name_off == 0 {
                let inner = self.types.get(m.type_id as usize);
                if inner.is_some_and(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION)
                    && let Some(off) = self.find(m.type_id, member, base + m.offset, depth + 1)?
                {
                    return Ok(Some(off));
                }
            } else if self.name(m.name_off) == member {
                if m.bitfield {
                    return Ok(Some(base + m.offset + 1)); // not byte-aligned: reported as bitfield
                }
                return Ok(Some(base + m.offset));
            }
        }
        Ok(None)
    }

    /// The offsets the eBPF programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let sk_common = self.member_offset("sock", "__sk_common")?;
        let regs = |m: &str| self.member_offset("pt_regs", m);
        let regs_syscall = regs("dx")?;
        // One read takes the four: they must lie as `SyscallRegs` says.
        if [regs("si")?, regs("di")?, regs("orig_ax")?] != [8, 16, 24].map(|d| regs_syscall + d) {
            return Err(BtfError::Layout(
                "pt_regs' dx, si, di and orig_ax are not consecutive",
            ));
        }
        Ok(KernelOffsets {
            task_files: self.member_offset("task_struct", "files")?,
            files_fdt: self.member_offset("files_struct", "fdt")?,
            fdt_max_fds: self.member_offset("fdtable", "max_fds")?,
            fdt_fd: self.member_offset("fdtable", "fd")?,
            file_private_data: self.member_offset("file", "private_data")?,
            socket_sk: self.member_offset("socket", "sk")?,
            task_flags: self.member_offset("task_struct", "flags")?,
            _pad2: 0,
            sk_net: sk_common + self.member_offset("sock_common", "skc_net")?,
            net_ns_inum: self.member_offset("net", "ns")?
                + self.member_offset("ns_common", "inum")?,
            tcp_write_seq: self.member_offset("tcp_sock", "write_seq")?,
            tcp_copied_seq: self.member_offset("tcp_sock", "copied_seq")?,
            regs_syscall,
            _pad: 0,
        })
    }
}

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the agent finds syscall arguments in x86-64 registers only, so far");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_from_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("SKIPPED offsets_from_this_kernel: no {VMLINUX_BTF} on this machine");
            return;
        }
        let btf = Btf::from_file(path).expect("parse vmlinux BTF");
        let off = btf.kernel_offsets().expect("offsets");
        // The x86-64 syscall ABI's registers, at their place in pt_regs
        // since the first 64-bit kernels.
        assert_eq!(off.regs_syscall, 96, "pt_regs.dx");
        assert!(off.sk_net > 0 && off.net_ns_inum > 0);
        assert!(off.task_files > 0 && off.fdt_fd > 0 && off.socket_sk > 0);
        // Both are deep inside tcp_sock, past the inet_connection_sock.
        assert!(off.tcp_write_seq > 1000 && off.tcp_copied_seq > 1000);
        assert_ne!(off.tcp_write_seq, off.tcp_copied_seq);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(b"nope"), Err(BtfError::Malformed(_))));
        assert!(matches!(
            Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0]),
            Err(BtfError::Malformed(_))
        ));
        let mut hdr = vec![0x9f, 0xeb, 1, 0];
        hdr.extend_from_slice(&24u32.to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&1000u32.to_le_bytes()); // type_len past the end
        hdr.extend_from_slice(&0u32.to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(Btf::parse(&hdr), Err(BtfError::Malformed(_))));
    }
}

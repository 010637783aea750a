//! Just enough of a BTF reader to find struct member offsets in `/sys/kernel/btf/vmlinux`.
//!
//! The probe reads a few kernel structs (`task_struct`, `pid`, `upid`, …) whose layout changes
//! between kernels and configs; reading the running kernel's BTF gives the real offsets without
//! CO-RE support in the Rust eBPF toolchain. (aya parses BTF too, but keeps members private.)

use std::{collections::HashMap, path::Path};

/// The running kernel's BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why an offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The BTF file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not BTF this reader understands.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// No struct or union of that name.
    #[error("no struct `{0}` in kernel BTF")]
    NoStruct(String),
    /// The struct has no such member.
    #[error("no member `{member}` in `{ty}` in kernel BTF")]
    NoMember {
        /// The struct.
        ty: String,
        /// The member path.
        member: String,
    },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    ty: u32,
    /// Bit offset (already decoded from the bitfield encoding).
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name_off: u32,
    /// Size for structs and unions, referenced type for modifiers and typedefs.
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed BTF types and strings.
pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct and union ids by name (first definition wins, as in the kernel's own lookups).
    by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw little-endian BTF.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_bytes.len() {
            let name_off = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let size_or_type = u32_at(types_bytes, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(types_bytes, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(types_bytes, m)?,
                            ty: u32_at(types_bytes, m + 4)?,
                            // With kind_flag, the high 8 bits hold a bitfield size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                0 | 20.. => return Err(BtfError::Malformed("unknown type kind")),
                _ => 0,
            };
            at += extra;
            types.push(Type {
                kind,
                name_off,
                size_or_type,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if matches!(ty.kind, KIND_STRUCT | KIND_UNION) && ty.name_off != 0 {
                let name = btf.string(ty.name_off).to_owned();
                btf.by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type;
                }
                _ => break,
            }
        }
        id
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.types[self.struct_id(name)? as usize].size_or_type)
    }

    /// Byte offset of a member path such as `["sa", "sa_handler"]` in `struct name`, looking
    /// through anonymous structs and unions as C does.
    pub fn member_offset(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = self.struct_id(name)?;
        let mut bits = 0;
        for field in path {
            let (member_bits, ty) =
                self.find_member(id, field, 0)
                    .ok_or_else(|| BtfError::NoMember {
                        ty: name.to_owned(),
                        member: path.join("."),
                    })?;
            bits += member_bits;
            id = self.resolve(ty);
        }
        Ok(bits / 8)
    }

    /// Finds `field` in struct/union `id`, descending into anonymous members.
    fn find_member(&self, id: u32, field: &str, depth: u32) -> Option<(u32, u32)> {
        let ty = self.types.get(id as usize)?;
        if depth > 8 || !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in &ty.members {
            if m.name_off == 0 {
                if let Some((bits, ty)) = self.find_member(self.resolve(m.ty), field, depth + 1) {
                    return Some((m.bit_offset + bits, ty));
                }
            } else if self.string(m.name_off) == field {
                return Some((m.bit_offset, m.ty));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF for: struct inner { int a; int b; }; struct outer { int x; struct { int y; };
    /// struct inner in; };
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0x\0y\0in\0outer\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { int a @0; int b @32 }
        push(&[s("inner"), KIND_STRUCT << 24 | 2, 8]);
        push(&[s("a"), 1, 0, s("b"), 1, 32]);
        // 3: anonymous struct { int y @0 }
        push(&[0, KIND_STRUCT << 24 | 1, 4]);
        push(&[s("y"), 1, 0]);
        // 4: const struct inner
        push(&[0, KIND_CONST << 24, 2]);
        // 5: struct outer { int x @0; anon @32; const inner in @64 }
        push(&[s("outer"), KIND_STRUCT << 24 | 3, 16]);
        push(&[s("x"), 1, 0, 0, 3, 32, s("in"), 4, 64]);
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend(w.to_le_bytes());
        }
        data.extend(types);
        data.extend(strings);
        data
    }

    #[test]
    fn finds_nested_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", &["x"]).unwrap(), 0);
        assert_eq!(btf.member_offset("outer", &["y"]).unwrap(), 4);
        assert_eq!(btf.member_offset("outer", &["in", "b"]).unwrap(), 12);
        assert_eq!(btf.struct_size("inner").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", &["nope"]),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.struct_size("missing"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all").is_err());
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn running_kernel_has_the_offsets_the_probe_needs() {
        let Ok(btf) = Btf::from_file(Path::new(VMLINUX)) else {
            eprintln!("skipped: no {VMLINUX}");
            return;
        };
        // si_code is the third int of siginfo on every architecture Linux supports.
        assert_eq!(
            btf.member_offset("kernel_siginfo", &["si_code"]).unwrap(),
            8
        );
        assert_eq!(btf.member_offset("upid", &["nr"]).unwrap(), 0);
        assert!(btf.member_offset("task_struct", &["thread_pid"]).unwrap() > 0);
        assert!(btf.member_offset("pid_namespace", &["ns", "inum"]).is_ok());
        // The command line and executable name (through anonymous structs and unions).
        assert!(btf.member_offset("task_struct", &["mm"]).unwrap() > 0);
        let start = btf.member_offset("mm_struct", &["arg_start"]).unwrap();
        assert_eq!(
            btf.member_offset("mm_struct", &["arg_end"]).unwrap(),
            start + 8
        );
        assert!(btf.member_offset("mm_struct", &["exe_file"]).is_ok());
        assert!(btf.member_offset("file", &["f_path", "dentry"]).is_ok());
        let name = btf.member_offset("dentry", &["d_name", "name"]).unwrap();
        let len = btf.member_offset("dentry", &["d_name", "len"]).unwrap();
        // `struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; name; }`
        // on little-endian.
        assert_eq!(
            (name - 8, len),
            (btf.member_offset("dentry", &["d_name"]).unwrap(), name - 4)
        );
    }
}

//! Reading the running kernel's type information (BTF,
//! `/sys/kernel/btf/vmlinux`) to find where a field lives inside a kernel
//! structure. The programs read the caller's credentials, namespaces and
//! cgroup through `bpf_probe_read_kernel` at these offsets: Rust cannot
//! emit the BTF relocations a C program would carry (CO-RE), so the agent
//! resolves them at start and hands them to the programs (`offsets.rs`).
//!
//! Only what that needs is parsed: the header, the type section (every kind
//! is walked, only structs and unions are kept with their members, and
//! typedefs and qualifiers to see through them) and the string section.
//! The format is `include/uapi/linux/btf.h`.
//!
//! A field is found through anonymous structs and unions (the kernel wraps
//! many fields in them), and may have several names (a rename across kernel
//! versions, such as `kernfs_node.parent` becoming `__parent` in 6.15): the
//! first name that exists wins. A field that is not there is an error that
//! names the structure and every name tried: the caller must refuse rather
//! than guess.
//!
//! Why not a library (measured on a 5.5 MB vmlinux BTF, Linux 6.18):
//! aya's own `aya_obj::btf::Btf` finds a type's id by name but has no
//! public way to read a type (`type_by_id` is crate-private), so neither
//! member offsets nor enumerators; `btf-rs` has both, but took 90-290 ms
//! to parse (its cached backend) or 56 ms for our lookups (its mmap
//! backend, a scan per name), where this takes 3-20 ms, and it is
//! LGPL-2.1 in a MIT/Apache binary. Handing one parse to aya's loader
//! (`EbpfLoader::btf`) would save nothing yet: aya 0.14's
//! `EbpfLoader::new` parses the kernel's BTF itself whatever it is then
//! handed, so `Guard::open_in` runs that parse and this one side by side.

use std::{collections::HashMap, fmt, path::Path};

use aya_obj::btf::BtfKind;

/// Where the kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// `BTF_MAGIC` (include/uapi/linux/btf.h), which `aya_obj::generated`
/// leaves out; the kinds are its `BtfKind`.
const MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read the kernel's BTF at {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {strukt} has no member named {}", names.join(" or "))]
    NoMember { strukt: String, names: Vec<String> },
    #[error("{strukt}.{member} is a bit field, which the programs cannot read")]
    Bitfield { strukt: String, member: String },
    #[error("{strukt}.{member} is not a struct or union, so {next} cannot be inside it")]
    NotAStruct {
        strukt: String,
        member: String,
        next: String,
    },
}

/// One member of a struct or union.
#[derive(Clone, Debug)]
struct Member {
    /// Empty for an anonymous struct or union.
    name: String,
    type_id: u32,
    /// From the start of the enclosing type, in bits.
    bit_offset: u32,
    /// Non-zero for a bit field.
    bitfield_size: u32,
}

/// What the lookups need of a type, found in one pass without reading the
/// members of every struct (the kernel has tens of thousands): where its
/// record is, so that a struct's members are read only when asked for.
#[derive(Clone, Copy, Debug)]
enum Type {
    /// A struct or union: its record's offset in the type section.
    Composite {
        at: u32,
    },
    /// A typedef, `const`, `volatile`, `restrict` or type tag: see through.
    Alias(u32),
    /// An enum (32- or 64-bit): its record's offset in the type section.
    Enum {
        at: u32,
    },
    Other,
}

/// A parsed BTF blob.
#[derive(Debug)]
pub struct Btf {
    /// The type section.
    types_section: Vec<u8>,
    /// The string section.
    strings: Vec<u8>,
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    /// Struct (and union) ids by name; the first of a name wins.
    by_name: HashMap<String, u32>,
    /// Enum ids by name; the first of a name wins.
    enums: HashMap<String, u32>,
}

/// Where a field is, from the start of the outermost structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Bytes.
    pub offset: u32,
    /// The field's type (aliases resolved).
    pub type_id: u32,
}

/// A struct or union, read.
struct Composite {
    name: String,
    size: u32,
    members: Vec<Member>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a BTF blob in this machine's byte order (the kernel's own).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let mut r = Reader { data, at: 0 };
        let magic = r.u16()?;
        if magic != MAGIC {
            return Err(malformed(format!("magic {magic:#x}, expected {MAGIC:#x}")));
        }
        let _version = r.u8()?;
        let _flags = r.u8()?;
        let hdr_len = r.u32()? as usize;
        let type_off = r.u32()? as usize;
        let type_len = r.u32()? as usize;
        let str_off = r.u32()? as usize;
        let str_len = r.u32()? as usize;
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .filter(|range| range.end <= data.len())
                .map(|range| &data[range])
                .ok_or_else(|| malformed(format!("the {what} section is out of bounds")))
        };
        let mut btf = Self {
            types_section: section(type_off, type_len, "type")?.to_vec(),
            strings: section(str_off, str_len, "string")?.to_vec(),
            types: vec![Type::Other],
            by_name: HashMap::new(),
            enums: HashMap::new(),
        };
        let mut r = Reader {
            data: &btf.types_section,
            at: 0,
        };
        let (mut by_name, mut enums) = (HashMap::new(), HashMap::new());
        while r.at < btf.types_section.len() {
            let (ty, name_off) = index_type(&mut r)?;
            let index = match ty {
                Type::Composite { .. } => Some(&mut by_name),
                Type::Enum { .. } => Some(&mut enums),
                _ => None,
            };
            if let Some(index) = index.filter(|_| name_off != 0) {
                let name = string(&btf.strings, name_off)?;
                index.entry(name).or_insert(btf.types.len() as u32);
            }
            btf.types.push(ty);
        }
        btf.by_name = by_name;
        btf.enums = enums;
        Ok(btf)
    }

    /// Whether the kernel has a struct (or union) named `name`.
    pub fn has_struct(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether enum `enum_name` has an enumerator named `name`: how the
    /// kernel says which commands, map types, attach types and helpers it
    /// has (`enum bpf_cmd`, `bpf_map_type`, `bpf_attach_type`,
    /// `bpf_func_id`).
    pub fn has_enumerator(&self, enum_name: &str, name: &str) -> Result<bool, BtfError> {
        let Some(&id) = self.enums.get(enum_name) else {
            return Ok(false);
        };
        let Some(Type::Enum { at }) = self.types.get(id as usize) else {
            return Ok(false);
        };
        let mut r = Reader {
            data: &self.types_section,
            at: *at as usize,
        };
        let _name_off = r.u32()?;
        let info = r.u32()?;
        let _size = r.u32()?;
        let vlen = info & 0xffff;
        // `BTF_KIND_ENUM` records are 8 bytes each, `ENUM64` 12.
        let record = if (info >> 24) & 0x1f == BtfKind::Enum64 as u32 {
            12
        } else {
            8
        };
        for _ in 0..vlen {
            let name_off = r.u32()?;
            r.skip(record - 4)?;
            if string(&self.strings, name_off)? == name {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The size in bytes of struct `name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        match self.composite(self.struct_id(name)?)? {
            Some(c) => Ok(c.size),
            None => Err(BtfError::NoStruct(name.to_owned())),
        }
    }

    /// The field reached from struct `strukt` through `path`: each step is
    /// a member of the previous step's (embedded, not pointed-to) struct,
    /// given as the names it may have, first found wins.
    pub fn field(&self, strukt: &str, path: &[&[&str]]) -> Result<Field, BtfError> {
        let mut current = Field {
            offset: 0,
            type_id: self.struct_id(strukt)?,
        };
        let mut within = strukt.to_owned();
        let mut previous = String::new();
        for names in path {
            let Some(c) = self.composite(current.type_id)? else {
                return Err(BtfError::NotAStruct {
                    strukt: within,
                    member: previous,
                    next: names.join(" or "),
                });
            };
            let type_name = if c.name.is_empty() {
                within.clone()
            } else {
                c.name.clone()
            };
            let mut found = None;
            for n in *names {
                if let Some((bits, t)) = self.find_member(&c.members, n, 0)? {
                    found = Some((*n, bits, t));
                    break;
                }
            }
            let (name, bits, type_id) = found.ok_or_else(|| BtfError::NoMember {
                strukt: type_name.clone(),
                names: names.iter().map(|n| (*n).to_owned()).collect(),
            })?;
            let Some(bits) = bits else {
                return Err(BtfError::Bitfield {
                    strukt: type_name,
                    member: name.to_owned(),
                });
            };
            current = Field {
                offset: current.offset + bits / 8,
                type_id: self.resolve(type_id),
            };
            within = type_name;
            previous = name.to_owned();
        }
        Ok(current)
    }

    /// A one-bit field `member` of struct `strukt` (directly, or inside
    /// its anonymous structs and unions): the byte that holds it, from the
    /// start of the struct, and its mask in that byte. Little-endian
    /// layout (x86_64, arm64): bit `n` of the struct is bit `n % 8` of
    /// byte `n / 8`.
    pub fn flag_bit(&self, strukt: &str, member: &str) -> Result<(u32, u8), BtfError> {
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            names: vec![member.to_owned()],
        };
        let Some(c) = self.composite(self.struct_id(strukt)?)? else {
            return Err(BtfError::NoStruct(strukt.to_owned()));
        };
        let mut todo = vec![(c.members, 0u32)];
        for _ in 0..8 {
            let mut next = Vec::new();
            for (members, base) in todo {
                for m in &members {
                    if m.name == member {
                        if m.bitfield_size != 1 {
                            return Err(no_member());
                        }
                        let bit = base + m.bit_offset;
                        return Ok((bit / 8, 1u8 << (bit % 8)));
                    }
                    if m.name.is_empty() {
                        if let Some(inner) = self.composite(m.type_id)? {
                            next.push((inner.members, base + m.bit_offset));
                        }
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            todo = next;
        }
        Err(no_member())
    }

    /// The struct (or union) named `name`.
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// The struct or union `id` (aliases resolved), read; `None` when it is
    /// another kind of type.
    fn composite(&self, id: u32) -> Result<Option<Composite>, BtfError> {
        let Some(Type::Composite { at }) = self.types.get(self.resolve(id) as usize) else {
            return Ok(None);
        };
        let mut r = Reader {
            data: &self.types_section,
            at: *at as usize,
        };
        read_composite(&mut r, &self.strings).map(Some)
    }

    /// Follows typedefs and qualifiers (bounded: a loop in them is
    /// malformed BTF, which then resolves to whatever it stopped at).
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias(next)) => id = *next,
                _ => break,
            }
        }
        id
    }

    /// The bit offset (`None` for a bit field) and type of member `name`,
    /// looking inside anonymous structs and unions too.
    fn find_member(
        &self,
        members: &[Member],
        name: &str,
        depth: u32,
    ) -> Result<Option<(Option<u32>, u32)>, BtfError> {
        for m in members {
            if m.name == name {
                let bits = (m.bitfield_size == 0 && m.bit_offset % 8 == 0).then_some(m.bit_offset);
                return Ok(Some((bits, m.type_id)));
            }
        }
        if depth >= 8 {
            return Ok(None);
        }
        for m in members.iter().filter(|m| m.name.is_empty()) {
            let Some(inner) = self.composite(m.type_id)? else {
                continue;
            };
            if let Some((bits, type_id)) = self.find_member(&inner.members, name, depth + 1)? {
                return Ok(Some((bits.map(|b| b + m.bit_offset), type_id)));
            }
        }
        Ok(None)
    }
}

fn malformed(what: String) -> BtfError {
    BtfError::Malformed(what)
}

/// Indexes one type at `r` (skipping what follows it): its kind, and its
/// name's offset in the string section.
fn index_type(r: &mut Reader<'_>) -> Result<(Type, u32), BtfError> {
    let at = r.at as u32;
    let name_off = r.u32()?;
    let info = r.u32()?;
    let size_or_type = r.u32()?;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let ty = match BtfKind::try_from(kind).unwrap_or(BtfKind::Unknown) {
        BtfKind::Struct | BtfKind::Union => {
            r.skip(12 * vlen)?;
            Type::Composite { at }
        }
        BtfKind::Typedef
        | BtfKind::Volatile
        | BtfKind::Const
        | BtfKind::Restrict
        | BtfKind::TypeTag => Type::Alias(size_or_type),
        BtfKind::Int | BtfKind::Var | BtfKind::DeclTag => {
            r.skip(4)?;
            Type::Other
        }
        BtfKind::Array => {
            r.skip(12)?;
            Type::Other
        }
        BtfKind::Enum => {
            r.skip(8 * vlen)?;
            Type::Enum { at }
        }
        BtfKind::Enum64 => {
            r.skip(12 * vlen)?;
            Type::Enum { at }
        }
        BtfKind::FuncProto => {
            r.skip(8 * vlen)?;
            Type::Other
        }
        BtfKind::DataSec => {
            r.skip(12 * vlen)?;
            Type::Other
        }
        BtfKind::Ptr | BtfKind::Fwd | BtfKind::Func | BtfKind::Float => Type::Other,
        BtfKind::Unknown => return Err(malformed(format!("unknown type kind {kind}"))),
    };
    Ok((ty, name_off))
}

/// Reads the struct or union record at `r`, with its members.
fn read_composite(r: &mut Reader<'_>, strings: &[u8]) -> Result<Composite, BtfError> {
    let name_off = r.u32()?;
    let info = r.u32()?;
    let size = r.u32()?;
    let vlen = (info & 0xffff) as usize;
    let kind_flag = info >> 31 == 1;
    let mut members = Vec::with_capacity(vlen);
    for _ in 0..vlen {
        let name = string(strings, r.u32()?)?;
        let type_id = r.u32()?;
        let offset = r.u32()?;
        let (bit_offset, bitfield_size) = if kind_flag {
            (offset & 0x00ff_ffff, offset >> 24)
        } else {
            (offset, 0)
        };
        members.push(Member {
            name,
            type_id,
            bit_offset,
            bitfield_size,
        });
    }
    Ok(Composite {
        name: string(strings, name_off)?,
        size,
        members,
    })
}

/// The NUL-terminated string at `off` of the string section.
fn string(strings: &[u8], off: u32) -> Result<String, BtfError> {
    let rest = strings
        .get(off as usize..)
        .ok_or_else(|| malformed(format!("string offset {off} is out of bounds")))?;
    let len = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed(format!("the string at {off} is not terminated")))?;
    Ok(String::from_utf8_lossy(&rest[..len]).into_owned())
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BtfError> {
        let bytes = self
            .data
            .get(self.at..self.at + N)
            .ok_or_else(|| malformed(format!("truncated at byte {}", self.at)))?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, BtfError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, BtfError> {
        Ok(u16::from_ne_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, BtfError> {
        Ok(u32::from_ne_bytes(self.take()?))
    }

    fn skip(&mut self, n: usize) -> Result<(), BtfError> {
        if self.at + n > self.data.len() {
            return Err(malformed(format!("truncated at byte {}", self.at)));
        }
        self.at += n;
        Ok(())
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.offset)
    }
}

#[cfg(test)]
pub(crate) mod tests;

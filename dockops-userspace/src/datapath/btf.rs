//! Member offsets of kernel structs, from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for
//! programs that read a struct the tracepoint passes by pointer. aya parses BTF too but does
//! not expose struct members; this reads only what that needs: struct names, their members'
//! names, offsets and sizes.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

struct Type {
    kind: u32,
    name: u32,
    /// The size for ints, enums, structs and unions; the type referred to for typedefs,
    /// qualifiers and pointers.
    size_or_target: u32,
    /// Struct members: name, type, offset in bits (bitfields are not read).
    members: Vec<(u32, u32, u32)>,
}

/// The kernel's types, as far as [`Btf::member`] needs them.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let u16_at = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        };
        let u32_at = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(MAGIC) {
            return Err("not BTF of this host's byte order".into());
        }
        let header = |i: usize| {
            u32_at(4 + 4 * i)
                .map(|v| v as usize)
                .ok_or("truncated header")
        };
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (header(0)?, header(1)?, header(2)?, header(3)?, header(4)?);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("truncated strings")?
            .to_vec();
        let start = hdr_len + type_off;
        let end = start + type_len;
        // Type ids start at 1; id 0 is void.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            size_or_target: 0,
            members: Vec::new(),
        }];
        let mut at = start;
        while at < end {
            let word = |i: usize| u32_at(at + 4 * i).ok_or("truncated type");
            let (name, info, size_or_target) = (word(0)?, word(1)?, word(2)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfields = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION => {
                    for m in 0..vlen {
                        let field =
                            |i: usize| u32_at(at + 12 * m + 4 * i).ok_or("truncated member");
                        let offset = field(2)?;
                        let bits = if bitfields {
                            offset & 0xff_ffff
                        } else {
                            offset
                        };
                        members.push((field(0)?, field(1)?, bits));
                    }
                    12 * vlen
                }
                ENUM | FUNC_PROTO => 8 * vlen,
                DATASEC | ENUM64 => 12 * vlen,
                0..=ENUM64 => 0,
                _ => return Err(format!("unknown BTF kind {kind}")),
            };
            at += extra;
            types.push(Type {
                kind,
                name,
                size_or_target,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs: HashMap::new(),
        };
        btf.structs = (1_u32..)
            .zip(&btf.types[1..])
            .filter(|(_, t)| t.kind == STRUCT)
            .map(|(id, t)| (btf.string(t.name).to_owned(), id))
            .collect();
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..len]).unwrap_or_default()
    }

    /// The size in bytes of type `id`, through typedefs and qualifiers.
    fn size(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                INT | ENUM | ENUM64 | STRUCT | UNION => return Some(t.size_or_target),
                PTR => return Some(8),
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_target,
                _ => return None,
            }
        }
        None
    }

    /// `(byte offset, size)` of `member` in `struct name`, a named member directly in it.
    pub fn member(&self, name: &str, member: &str) -> Result<(u32, u32), String> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| format!("no struct {name}"))?;
        let (_, ty, bits) = self.types[id as usize]
            .members
            .iter()
            .find(|(n, _, _)| self.string(*n) == member)
            .ok_or_else(|| format!("no member {member} in struct {name}"))?;
        let size = self
            .size(*ty)
            .ok_or_else(|| format!("struct {name} member {member} has no size"))?;
        if bits % 8 != 0 {
            return Err(format!("struct {name} member {member} is a bitfield"));
        }
        Ok((bits / 8, size))
    }
}

#[cfg(test)]
mod tests {
    use super::Btf;

    /// The running kernel's BTF, which the tests' hosts (6.18) and guest (6.1) have.
    fn vmlinux() -> Btf {
        Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux").unwrap()).unwrap()
    }

    #[test]
    fn finds_members_and_their_sizes() {
        let btf = vmlinux();
        // The first member of `struct list_head` is `next`, a pointer; `prev` follows.
        assert_eq!(btf.member("list_head", "next"), Ok((0, 8)));
        assert_eq!(btf.member("list_head", "prev"), Ok((8, 8)));
        // `struct request` starts with its queue; `cmd_flags` is a 4-byte typedef.
        assert_eq!(btf.member("request", "q"), Ok((0, 8)));
        let (flags, size) = btf.member("request", "cmd_flags").unwrap();
        assert!(
            flags >= 8 && size == 4,
            "cmd_flags at {flags}, {size} bytes"
        );
        assert_eq!(btf.member("gendisk", "major").map(|(_, s)| s), Ok(4));
    }

    #[test]
    fn names_what_is_missing() {
        let btf = vmlinux();
        assert_eq!(
            btf.member("request", "no_such_member"),
            Err("no member no_such_member in struct request".into())
        );
        assert_eq!(
            btf.member("no_such_struct", "q"),
            Err("no struct no_such_struct".into())
        );
        assert!(Btf::parse(b"\x00\x00 not btf").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0]).is_err());
    }
}

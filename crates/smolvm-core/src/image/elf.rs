//! Just enough ELF64 reading for three questions: is a binary static (no
//! PT_INTERP, so it runs in a guest without a dynamic loader), is an extracted
//! vmlinux complete, and which modules does a kernel module depend on (its
//! `.modinfo` `depends=` entry: Debian's kernel package ships no modules.dep,
//! and the host may have no depmod to make one).

/// ELF header facts we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElfHeader {
    pub machine: u16,
    /// Offset just past the section header table; a truncated file is shorter.
    pub sections_end: u64,
    phoff: u64,
    phentsize: u64,
    phnum: u64,
}

pub(crate) const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;

fn u16_at(d: &[u8], off: u64) -> Option<u16> {
    let o = usize::try_from(off).ok()?;
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], off: u64) -> Option<u32> {
    let o = usize::try_from(off).ok()?;
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], off: u64) -> Option<u64> {
    let o = usize::try_from(off).ok()?;
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parses the ELF64 little-endian header at the start of `d`.
pub(crate) fn header(d: &[u8]) -> Result<ElfHeader, String> {
    if d.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file (no \\x7fELF magic)".into());
    }
    if d.get(4) != Some(&2) || d.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let short = || "truncated ELF header".to_string();
    let shoff = u64_at(d, 0x28).ok_or_else(short)?;
    let shentsize = u64::from(u16_at(d, 0x3a).ok_or_else(short)?);
    let shnum = u64::from(u16_at(d, 0x3c).ok_or_else(short)?);
    Ok(ElfHeader {
        machine: u16_at(d, 0x12).ok_or_else(short)?,
        sections_end: shoff.saturating_add(shentsize.saturating_mul(shnum)),
        phoff: u64_at(d, 0x20).ok_or_else(short)?,
        phentsize: u64::from(u16_at(d, 0x36).ok_or_else(short)?),
        phnum: u64::from(u16_at(d, 0x38).ok_or_else(short)?),
    })
}

/// Whether the program headers name an interpreter (a dynamically linked
/// executable). `d` must hold at least the program header table.
pub(crate) fn has_interp(d: &[u8]) -> Result<bool, String> {
    let h = header(d)?;
    for i in 0..h.phnum {
        let off = h.phoff.saturating_add(i.saturating_mul(h.phentsize));
        let p_type = u32_at(d, off).ok_or("truncated program header table")?;
        if p_type == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The contents of the section called `name`, if any.
fn section<'a>(d: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    let short = || "truncated section header table".to_string();
    let shoff = u64_at(d, 0x28).ok_or_else(short)?;
    let shentsize = u64::from(u16_at(d, 0x3a).ok_or_else(short)?);
    let shnum = u64::from(u16_at(d, 0x3c).ok_or_else(short)?);
    let shstrndx = u64::from(u16_at(d, 0x3e).ok_or_else(short)?);
    let sh = |i: u64| shoff.saturating_add(i.saturating_mul(shentsize));
    let slice = |off: u64, size: u64| -> Option<&'a [u8]> {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        d.get(start..end)
    };
    let strtab = slice(
        u64_at(d, sh(shstrndx) + 0x18).ok_or_else(short)?,
        u64_at(d, sh(shstrndx) + 0x20).ok_or_else(short)?,
    )
    .ok_or("section name table out of range")?;
    for i in 0..shnum {
        let name_off = u32_at(d, sh(i)).ok_or_else(short)? as usize;
        let Some(rest) = strtab.get(name_off..) else {
            continue;
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            let off = u64_at(d, sh(i) + 0x18).ok_or_else(short)?;
            let size = u64_at(d, sh(i) + 0x20).ok_or_else(short)?;
            return slice(off, size)
                .map(Some)
                .ok_or_else(|| format!("section {name} out of range"));
        }
    }
    Ok(None)
}

/// The module names a kernel module (.ko contents) depends on, from the
/// `depends=` string of its `.modinfo` section. Empty when it has none.
pub(crate) fn module_depends(ko: &[u8]) -> Result<Vec<String>, String> {
    header(ko)?;
    let info = section(ko, ".modinfo")?.ok_or("no .modinfo section")?;
    for entry in info.split(|&b| b == 0) {
        if let Some(v) = entry.strip_prefix(b"depends=") {
            let v = String::from_utf8_lossy(v);
            return Ok(v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        assert!(header(b"#!/bin/sh\n").is_err());
        assert!(header(b"\x7fELF\x01\x01").is_err());
        assert!(header(b"\x7fELF\x02\x01\x01").is_err());
    }

    #[test]
    fn host_binaries() {
        // /bin/sh on Debian is dynamically linked; its header must parse.
        let d = std::fs::read("/bin/sh").expect("read /bin/sh");
        let h = header(&d).expect("parse");
        assert_eq!(h.machine, EM_X86_64);
        assert!(has_interp(&d).expect("phdrs"));
        assert!(h.sections_end <= d.len() as u64);
    }
}

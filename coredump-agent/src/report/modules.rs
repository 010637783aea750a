//! report::modules: the executable and libraries a core had mapped, from the core alone.
//!
//! `NT_FILE` lists every file mapping (path, addresses, file offset). The first page of each
//! mapped ELF file is in the core (`coredump_filter` bit 4, on by default): its program headers
//! give the load bias (where the file's address 0 was mapped) and its `PT_NOTE` the GNU
//! build-id, which names the exact build and against which a module file found elsewhere is
//! checked. `AT_PHDR` in the auxiliary vector says which module is the executable.

use object::{
    LittleEndian as LE,
    elf::{self, FileHeader64, ProgramHeader64},
    pod,
    read::elf::NoteIterator,
};

use super::{notes::FileMapping, scan::Core};

/// A mapped ELF file, as the core describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreModule {
    /// The path, as the process saw it (` (deleted)` stripped).
    pub path: String,
    /// Whether the file had been deleted (unlinked) when the process crashed.
    pub deleted: bool,
    /// First mapped address (the mapping of file offset 0).
    pub start: u64,
    /// End of its last consecutive mapping.
    pub end: u64,
    /// Where the file's address 0 is mapped, when its program headers were in the core.
    pub bias: Option<u64>,
    /// The GNU build-id from the core's copy of its first page, lowercase hex.
    pub build_id: Option<String>,
    /// Whether it is the executable (it holds `AT_PHDR`).
    pub main: bool,
}

impl CoreModule {
    /// The file name.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// Whether `addr` is in its mappings.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// The `(deleted)` suffix the kernel adds to an unlinked file's path.
const DELETED: &str = " (deleted)";

/// The modules of a core: one per mapping of an ELF file's offset 0, with the mappings of
/// the same file that follow it.
pub fn from_core(core: &Core) -> Vec<CoreModule> {
    let files = &core.notes.files;
    let mut out: Vec<CoreModule> = Vec::new();
    let mut i = 0;
    while i < files.len() {
        let first = &files[i];
        let mut end = first.end;
        let mut j = i + 1;
        while j < files.len() && files[j].path == first.path && files[j].offset != 0 {
            end = end.max(files[j].end);
            j += 1;
        }
        if first.offset == 0 {
            out.push(module(core, first, end));
        }
        i = j;
    }
    if let Some(phdr) = core.notes.auxv.phdr.or(core.notes.auxv.entry)
        && let Some(m) = out.iter_mut().find(|m| m.contains(phdr))
    {
        m.main = true;
    }
    out
}

fn module(core: &Core, first: &FileMapping, end: u64) -> CoreModule {
    let (path, deleted) = match first.path.strip_suffix(DELETED) {
        Some(p) => (p.to_owned(), true),
        None => (first.path.clone(), false),
    };
    let header = core
        .memory
        .read(first.start, usize::MAX)
        .and_then(|page| ElfHeader::parse(page).ok());
    CoreModule {
        path,
        deleted,
        start: first.start,
        end,
        bias: header.as_ref().and_then(|h| h.bias(first.start)),
        build_id: header.and_then(|h| h.build_id),
        main: false,
    }
}

/// What the first page of an ELF file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfHeader {
    /// `e_type`.
    pub e_type: u16,
    /// `(p_vaddr, p_offset)` of each `PT_LOAD`.
    pub loads: Vec<(u64, u64)>,
    /// The GNU build-id, lowercase hex, if its note is within the bytes given.
    pub build_id: Option<String>,
}

impl ElfHeader {
    /// Parses the ELF header, program headers and notes found in `data` (the start of a file;
    /// notes beyond it are not found).
    pub fn parse(data: &[u8]) -> Result<Self, &'static str> {
        let (h, _) = pod::from_bytes::<FileHeader64<LE>>(data).map_err(|_| "too short")?;
        if h.e_ident.magic != elf::ELFMAG
            || h.e_ident.class != elf::ELFCLASS64
            || h.e_ident.data != elf::ELFDATA2LSB
        {
            return Err("not a 64-bit little-endian ELF file");
        }
        let phoff = usize::try_from(h.e_phoff.get(LE)).map_err(|_| "bad e_phoff")?;
        let phnum = usize::from(h.e_phnum.get(LE));
        let phdrs = data
            .get(phoff..)
            .and_then(|d| pod::slice_from_bytes::<ProgramHeader64<LE>>(d, phnum).ok())
            .map(|(p, _)| p)
            .ok_or("program headers beyond the first page")?;
        let mut out = Self {
            e_type: h.e_type.get(LE),
            ..Self::default()
        };
        for p in phdrs {
            match p.p_type.get(LE) {
                elf::PT_LOAD => out.loads.push((p.p_vaddr.get(LE), p.p_offset.get(LE))),
                elf::PT_NOTE if out.build_id.is_none() => {
                    let (at, len) = (p.p_offset.get(LE), p.p_filesz.get(LE));
                    let notes = usize::try_from(at)
                        .ok()
                        .zip(usize::try_from(len).ok())
                        .and_then(|(at, len)| data.get(at..at.checked_add(len)?));
                    let align = p.p_align.get(LE).max(4);
                    if let Some(notes) = notes {
                        out.build_id = build_id_in(notes, align);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The load bias given that file offset 0 is mapped at `start`: `start` minus the
    /// (page-aligned) address of the segment that holds offset 0.
    pub fn bias(&self, start: u64) -> Option<u64> {
        let (vaddr, offset) = self
            .loads
            .iter()
            .find(|(_, off)| *off == 0)
            .copied()
            .or_else(
                // Some linkers start the first segment after the headers: it still maps them.
                || self.loads.iter().min_by_key(|(v, _)| *v).copied(),
            )?;
        start.checked_sub(vaddr.checked_sub(offset)? & !0xfff)
    }
}

/// The `NT_GNU_BUILD_ID` among `notes`, lowercase hex.
pub fn build_id_in(notes: &[u8], align: u64) -> Option<String> {
    let mut iter = NoteIterator::<FileHeader64<LE>>::new(LE, align, notes).ok()?;
    while let Ok(Some(note)) = iter.next() {
        if note.name() == elf::ELF_NOTE_GNU && note.n_type(LE) == elf::NT_GNU_BUILD_ID {
            let id = note.desc();
            // Build-ids are 8 to 64 bytes (SHA-1: 20, xxhash: 8, MD5/UUID: 16).
            return (8..=64).contains(&id.len()).then(|| hex(id));
        }
    }
    None
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    crate::store::hex(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::notes::{self, Auxv, Notes};

    /// The first page of a 64-bit ELF file whose first PT_LOAD is at `vaddr` (offset 0),
    /// with a GNU build-id note.
    pub fn elf_page(vaddr: u64, build_id: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 64];
        p[0..4].copy_from_slice(&elf::ELFMAG);
        p[4] = elf::ELFCLASS64;
        p[5] = elf::ELFDATA2LSB;
        p[16..18].copy_from_slice(&elf::ET_DYN.to_le_bytes());
        p[32..40].copy_from_slice(&64u64.to_le_bytes());
        p[54..56].copy_from_slice(&56u16.to_le_bytes());
        p[56..58].copy_from_slice(&2u16.to_le_bytes());
        let note = notes::tests::note(elf::NT_GNU_BUILD_ID, b"GNU", build_id);
        let note_at = 64 + 2 * 56;
        for (t, off, va, sz) in [
            (elf::PT_LOAD, 0u64, vaddr, 4096u64),
            (elf::PT_NOTE, note_at, vaddr + note_at, note.len() as u64),
        ] {
            p.extend(t.to_le_bytes());
            p.extend(0u32.to_le_bytes());
            for v in [off, va, va, sz, sz, 4] {
                p.extend(v.to_le_bytes());
            }
        }
        p.extend(note);
        p.resize(4096, 0);
        p
    }

    #[test]
    fn build_id_and_bias_come_from_the_first_page() {
        let page = elf_page(0, &[0x3f, 0x2a, 1, 2, 3, 4, 5, 6, 7, 8]);
        let h = ElfHeader::parse(&page).unwrap();
        assert_eq!(
            h.build_id.as_deref(),
            Some("3f2a010203040506 0708".replace(' ', "").as_str())
        );
        assert_eq!(h.bias(0x5555_0000), Some(0x5555_0000));
        // Not position independent: mapped where it says.
        let h = ElfHeader::parse(&elf_page(0x40_0000, &[9; 20])).unwrap();
        assert_eq!(h.bias(0x40_0000), Some(0));
        assert!(ElfHeader::parse(&page[..100]).is_err());
        assert!(ElfHeader::parse(b"\x7fELF").is_err());
        // A build-id note of a silly size is not one.
        let h = ElfHeader::parse(&elf_page(0, &[1; 2])).unwrap();
        assert_eq!(h.build_id, None);
    }

    #[test]
    fn modules_group_mappings_and_find_the_executable() {
        let mut core = Core::default();
        let map = |start, end, offset, path: &str| notes::FileMapping {
            start,
            end,
            offset,
            path: path.into(),
        };
        core.notes = Notes {
            files: vec![
                map(0x1000, 0x2000, 0, "/app/server (deleted)"),
                map(0x2000, 0x5000, 0x1000, "/app/server (deleted)"),
                map(0x9000, 0xa000, 0, "/lib/libc.so.6"),
                map(0xa000, 0xc000, 0x1000, "/lib/libc.so.6"),
                map(0xd000, 0xe000, 0x2000, "/data/blob"),
            ],
            auxv: Auxv {
                phdr: Some(0x1040),
                ..Auxv::default()
            },
            ..Notes::default()
        };
        core.memory.insert(0x1000, elf_page(0, &[0xab; 20]));
        let m = from_core(&core);
        assert_eq!(m.len(), 2, "{m:#?}");
        assert_eq!(
            (m[0].path.as_str(), m[0].deleted, m[0].main, m[0].end),
            ("/app/server", true, true, 0x5000)
        );
        assert_eq!(m[0].build_id.as_deref(), Some(&*"ab".repeat(20)));
        assert_eq!(m[0].bias, Some(0x1000));
        assert_eq!(m[0].name(), "server");
        // libc's first page was not in the core: no build-id, no bias, still listed.
        assert_eq!(
            (m[1].name(), m[1].build_id.as_deref(), m[1].bias),
            ("libc.so.6", None, None)
        );
        assert!(!m[1].main);
    }
}

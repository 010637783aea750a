//! report::scan: reads an ELF core front to back, once, keeping only what a crash report needs.
//!
//! A core is the ELF header, the program headers, the `PT_NOTE` segment (right after them),
//! then the memory of every `PT_LOAD` segment in address order. Once the notes are read, the
//! crashing thread's registers say which bytes are worth keeping from the rest: the stack
//! above its stack pointer (to unwind), and the first page of every mapped file (the ELF
//! headers `coredump_filter` dumps by default, with the GNU build-id). Everything else passes
//! by untouched.
//!
//! The [`Scanner`] is fed bytes with their offset. The same code serves a tee on the kernel's
//! stream while it is received (socket, pipe), a raw core file read only where
//! [`Scanner::next_needed`] points, and a decompressed stream. Memory is bounded by
//! [`Limits`] whatever the core says.

use std::ops::Range;

use object::{
    LittleEndian as LE,
    elf::{self, FileHeader64, ProgramHeader64},
    pod,
};

use super::notes::{self, Machine, Notes};

/// What a scan may keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of `PT_NOTE` read (the dumping thread's notes come first; a process with
    /// thousands of threads has megabytes of them).
    pub notes: u64,
    /// Bytes of the crashing thread's stack kept, from its stack pointer up.
    pub stack: u64,
    /// Mapped files whose first page is kept.
    pub headers: usize,
    /// Bytes kept of each first page.
    pub header_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            notes: 16 << 20,
            stack: 1 << 20,
            headers: 1024,
            header_bytes: 4096,
        }
    }
}

impl Limits {
    /// The most memory a scan holds (besides its bookkeeping).
    pub fn max_bytes(&self) -> u64 {
        self.notes + self.stack + self.headers as u64 * self.header_bytes
    }
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Its address.
    pub vaddr: u64,
    /// Its size in memory.
    pub memsz: u64,
    /// Where its bytes are in the core.
    pub offset: u64,
    /// How many of them were dumped (0: none, e.g. file-backed text `coredump_filter` skips).
    pub filesz: u64,
}

impl Load {
    /// The core offset of `addr`, if the core holds that byte.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        let delta = addr.checked_sub(self.vaddr)?;
        (delta < self.filesz).then(|| self.offset + delta)
    }
}

/// Memory kept from the core: a few blocks (stack, first pages), by address.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    blocks: Vec<(u64, Vec<u8>)>,
}

impl Memory {
    /// Bytes at `addr`, up to `len`, if a block holds `addr` (fewer at the end of a block).
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let (start, bytes) = self
            .blocks
            .iter()
            .find(|(s, b)| addr >= *s && addr - s < b.len() as u64)?;
        let from = (addr - start) as usize;
        Some(&bytes[from..bytes.len().min(from + len)])
    }

    /// The 8 bytes at `addr`, little-endian.
    pub fn u64_at(&self, addr: u64) -> Option<u64> {
        let b = self.read(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.blocks.iter().map(|(_, b)| b.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a block (tests and fixtures).
    pub fn insert(&mut self, addr: u64, bytes: Vec<u8>) {
        self.blocks.push((addr, bytes));
    }
}

/// What a scan found.
#[derive(Clone, Debug, Default)]
pub struct Core {
    /// The machine, once the header was read.
    pub machine: Option<Machine>,
    /// The `PT_LOAD` segments.
    pub loads: Vec<Load>,
    /// The notes.
    pub notes: Notes,
    /// The kept memory.
    pub memory: Memory,
    /// Why something is missing.
    pub problems: Vec<String>,
}

impl Core {
    /// The dumping thread's registers.
    pub fn regs(&self) -> Option<notes::Regs> {
        self.notes.threads.first()?.regs
    }
}

/// What a pending read is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Header,
    ProgramHeaders,
    Note,
    Memory { vaddr: u64 },
}

/// Bytes wanted from the core: `[start, start + len)`, filled front to back.
#[derive(Debug)]
struct Want {
    start: u64,
    len: u64,
    buf: Vec<u8>,
    purpose: Purpose,
}

impl Want {
    fn new(start: u64, len: u64, purpose: Purpose) -> Self {
        Self {
            start,
            len,
            buf: Vec::new(),
            purpose,
        }
    }

    /// The next offset it needs.
    fn next(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    fn end(&self) -> u64 {
        self.start + self.len
    }

    fn done(&self) -> bool {
        self.buf.len() as u64 >= self.len
    }
}

const EHDR: u64 = std::mem::size_of::<FileHeader64<LE>>() as u64;
const PHDR: u64 = std::mem::size_of::<ProgramHeader64<LE>>() as u64;

/// Reads a core fed in order (or where it asks to be read).
#[derive(Debug)]
pub struct Scanner {
    limits: Limits,
    /// Pending reads, by start offset.
    wants: Vec<Want>,
    /// Notes still to arrive before the memory to keep is known.
    notes_pending: usize,
    core: Core,
    /// Given up: nothing more is read.
    stopped: bool,
}

impl Scanner {
    /// A scanner at the start of a core.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            wants: vec![Want::new(0, EHDR, Purpose::Header)],
            notes_pending: 0,
            core: Core::default(),
            stopped: false,
        }
    }

    /// The first range it still needs, if any: what a reader that can seek reads next.
    pub fn next_needed(&self) -> Option<Range<u64>> {
        self.wants
            .iter()
            .map(|w| w.next()..w.end())
            .min_by_key(|r| r.start)
    }

    /// Whether it needs nothing more.
    pub fn done(&self) -> bool {
        self.wants.is_empty()
    }

    /// Takes `data`, the core's bytes from `offset` on. Bytes it does not need cost a
    /// comparison; bytes before what it needs that it was never given are missed for good.
    pub fn feed(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        loop {
            let mut finished = Vec::new();
            for (i, want) in self.wants.iter_mut().enumerate() {
                let next = want.next();
                if next >= end || want.done() {
                    continue;
                }
                if next < offset {
                    // Passed by: a sequential stream never comes back.
                    finished.push(i);
                    continue;
                }
                let from = (next - offset) as usize;
                let take = (want.end() - next).min(end - next) as usize;
                want.buf.extend_from_slice(&data[from..from + take]);
                if want.done() {
                    finished.push(i);
                }
            }
            if finished.is_empty() {
                return;
            }
            // Highest index first, so the others stay valid.
            let taken: Vec<Want> = finished
                .into_iter()
                .rev()
                .map(|i| self.wants.swap_remove(i))
                .collect();
            for want in taken.into_iter().rev() {
                self.complete(want);
            }
            if self.stopped {
                self.wants.clear();
                return;
            }
            // New wants may lie within this same chunk: go round again.
        }
    }

    /// Ends the scan: what was found, and why anything still wanted is missing.
    pub fn finish(mut self) -> Core {
        for want in std::mem::take(&mut self.wants) {
            let what = match want.purpose {
                Purpose::Header => "the ELF header",
                Purpose::ProgramHeaders => "the program headers",
                Purpose::Note => "the notes",
                Purpose::Memory { .. } => "memory",
            };
            if matches!(want.purpose, Purpose::Memory { .. }) {
                // Keep what arrived: a stack cut short still unwinds some frames.
                self.keep_partial(want);
                continue;
            }
            self.core.problems.push(format!(
                "the core ends (or was not read) before {what} at offset {}",
                want.next()
            ));
        }
        self.core
    }

    fn keep_partial(&mut self, want: Want) {
        if let Purpose::Memory { vaddr } = want.purpose
            && !want.buf.is_empty()
        {
            self.core.memory.blocks.push((vaddr, want.buf));
        }
    }

    fn stop(&mut self, why: String) {
        self.core.problems.push(why);
        self.stopped = true;
    }

    fn complete(&mut self, want: Want) {
        if !want.done() {
            match want.purpose {
                Purpose::Memory { .. } => self.keep_partial(want),
                _ => self.stop(format!(
                    "the core was not read from its start (offset {} was passed)",
                    want.start
                )),
            }
            return;
        }
        match want.purpose {
            Purpose::Header => self.header(&want.buf),
            Purpose::ProgramHeaders => self.program_headers(&want.buf),
            Purpose::Note => {
                let machine = self.core.machine.unwrap_or(Machine::Other(0));
                notes::read(machine, &want.buf, &mut self.core.notes);
                self.notes_pending -= 1;
                if self.notes_pending == 0 {
                    self.plan_memory();
                }
            }
            Purpose::Memory { vaddr } => self.core.memory.blocks.push((vaddr, want.buf)),
        }
    }

    fn header(&mut self, buf: &[u8]) {
        let Ok((h, _)) = pod::from_bytes::<FileHeader64<LE>>(buf) else {
            return self.stop("the core is shorter than an ELF header".into());
        };
        let ident = &h.e_ident;
        if ident.magic != elf::ELFMAG {
            return self.stop("not an ELF file".into());
        }
        if ident.class != elf::ELFCLASS64 || ident.data != elf::ELFDATA2LSB {
            return self.stop("only 64-bit little-endian cores are read".into());
        }
        if h.e_type.get(LE) != elf::ET_CORE {
            return self.stop(format!(
                "an ELF file of type {}, not a core",
                h.e_type.get(LE)
            ));
        }
        self.core.machine = Some(Machine::from_elf(h.e_machine.get(LE)));
        let phnum = h.e_phnum.get(LE);
        if phnum == elf::PN_XNUM {
            // The real count is in the section header at the end of the core.
            return self
                .stop("the core has more than 65,534 segments: its memory map is not read".into());
        }
        if u64::from(h.e_phentsize.get(LE)) != PHDR {
            return self.stop(format!(
                "program headers of {} bytes",
                h.e_phentsize.get(LE)
            ));
        }
        let at = h.e_phoff.get(LE);
        self.wants.push(Want::new(
            at,
            u64::from(phnum) * PHDR,
            Purpose::ProgramHeaders,
        ));
    }

    fn program_headers(&mut self, buf: &[u8]) {
        let Ok(phdrs) = pod::slice_from_all_bytes::<ProgramHeader64<LE>>(buf) else {
            return self.stop("the program headers cannot be read".into());
        };
        for p in phdrs {
            let (offset, filesz) = (p.p_offset.get(LE), p.p_filesz.get(LE));
            match p.p_type.get(LE) {
                elf::PT_LOAD => self.core.loads.push(Load {
                    vaddr: p.p_vaddr.get(LE),
                    memsz: p.p_memsz.get(LE),
                    offset,
                    filesz,
                }),
                elf::PT_NOTE if filesz > 0 => {
                    let len = filesz.min(self.limits.notes);
                    if len < filesz {
                        self.core.problems.push(format!(
                            "only the first {len} of {filesz} bytes of notes were read"
                        ));
                    }
                    self.wants.push(Want::new(offset, len, Purpose::Note));
                    self.notes_pending += 1;
                }
                _ => {}
            }
        }
        self.core.loads.sort_by_key(|l| l.vaddr);
        if self.notes_pending == 0 {
            self.core.problems.push("the core has no notes".into());
            self.plan_memory();
        }
    }

    /// The segment holding `addr` with at least one byte of it dumped.
    fn load_of(&self, addr: u64) -> Option<Load> {
        let i = self.core.loads.partition_point(|l| l.vaddr <= addr);
        let l = *self.core.loads.get(i.checked_sub(1)?)?;
        (addr - l.vaddr < l.memsz).then_some(l)
    }

    /// Once the notes are known: which memory to keep.
    fn plan_memory(&mut self) {
        if let Some(regs) = self.core.regs() {
            match self.load_of(regs.sp) {
                Some(l) if l.offset_of(regs.sp).is_some() => {
                    let offset = l.offset_of(regs.sp).expect("checked");
                    let dumped = l.filesz - (regs.sp - l.vaddr);
                    let len = dumped.min(self.limits.stack);
                    self.wants
                        .push(Want::new(offset, len, Purpose::Memory { vaddr: regs.sp }));
                }
                _ => self
                    .core
                    .problems
                    .push(format!("the stack at {:#x} is not in the core", regs.sp)),
            }
        }
        let mut starts: Vec<u64> = self
            .core
            .notes
            .files
            .iter()
            .filter(|f| f.offset == 0)
            .map(|f| f.start)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        if starts.len() > self.limits.headers {
            self.core.problems.push(format!(
                "{} files are mapped: only the first {} are identified",
                starts.len(),
                self.limits.headers
            ));
            starts.truncate(self.limits.headers);
        }
        for start in starts {
            if let Some(l) = self.load_of(start)
                && l.vaddr == start
                && l.filesz > 0
            {
                let len = l.filesz.min(self.limits.header_bytes);
                self.wants
                    .push(Want::new(l.offset, len, Purpose::Memory { vaddr: start }));
            }
        }
    }
}

/// Scans a core that can be read anywhere (a file on disk): reads only what the scanner needs.
pub fn scan_at(
    limits: Limits,
    mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
) -> Core {
    let mut scanner = Scanner::new(limits);
    let mut buf = vec![0u8; 1 << 16];
    while let Some(range) = scanner.next_needed() {
        let len = (range.end - range.start).min(buf.len() as u64) as usize;
        match read_at(range.start, &mut buf[..len]) {
            Ok(0) => break,
            Ok(n) => scanner.feed(range.start, &buf[..n]),
            Err(e) => {
                let mut core = scanner.finish();
                core.problems
                    .push(format!("reading the core at offset {}: {e}", range.start));
                return core;
            }
        }
    }
    scanner.finish()
}

/// Scans a core read front to back from `reader` (a decompressed stream): stops reading as
/// soon as nothing more is needed.
pub fn scan_stream(limits: Limits, reader: &mut impl std::io::Read) -> Core {
    let far = std::time::Instant::now() + std::time::Duration::from_secs(365 * 86400);
    scan_stream_until(limits, reader, far)
}

/// [`scan_stream`], giving up at `deadline` (a huge compressed dump takes long to read).
pub fn scan_stream_until(
    limits: Limits,
    reader: &mut impl std::io::Read,
    deadline: std::time::Instant,
) -> Core {
    let mut scanner = Scanner::new(limits);
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while !scanner.done() {
        if std::time::Instant::now() > deadline {
            let mut core = scanner.finish();
            core.problems.push(format!(
                "the time budget ran out after reading {offset} bytes of the core"
            ));
            return core;
        }
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                scanner.feed(offset, &buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let mut core = scanner.finish();
                core.problems
                    .push(format!("reading the core at offset {offset}: {e}"));
                return core;
            }
        }
    }
    scanner.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::notes::tests::{note, nt_file_desc, prstatus_x86};

    /// A small x86_64 core: notes (the crashing thread with `regs`, `NT_FILE` for `files`),
    /// then `segments` (vaddr, bytes; empty bytes: not dumped, 4 KiB in memory).
    pub fn core(
        regs: (u64, u64, u64),
        files: &[(u64, u64, u64, &str)],
        segments: &[(u64, Vec<u8>)],
    ) -> Vec<u8> {
        let mut notes = note(
            elf::NT_PRSTATUS,
            b"CORE",
            &prstatus_x86(42, 11, regs.0, regs.1, regs.2),
        );
        let mut si = vec![0u8; 128];
        si[0..4].copy_from_slice(&11i32.to_le_bytes());
        si[8..12].copy_from_slice(&1i32.to_le_bytes());
        notes.extend(note(elf::NT_SIGINFO, b"CORE", &si));
        notes.extend(note(elf::NT_FILE, b"CORE", &nt_file_desc(files)));
        let phnum = 1 + segments.len() as u64;
        let notes_at = EHDR + phnum * PHDR;
        let mut data_at = (notes_at + notes.len() as u64).next_multiple_of(4096);
        let mut out = vec![0u8; EHDR as usize];
        out[0..4].copy_from_slice(&elf::ELFMAG);
        out[4] = elf::ELFCLASS64;
        out[5] = elf::ELFDATA2LSB;
        out[6] = 1;
        out[16..18].copy_from_slice(&elf::ET_CORE.to_le_bytes());
        out[18..20].copy_from_slice(&elf::EM_X86_64.to_le_bytes());
        out[32..40].copy_from_slice(&EHDR.to_le_bytes());
        out[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let phdr = |t: u32, off: u64, vaddr: u64, filesz: u64, memsz: u64| {
            let mut p = Vec::new();
            p.extend(t.to_le_bytes());
            p.extend(0u32.to_le_bytes());
            for v in [off, vaddr, 0, filesz, memsz, 4096] {
                p.extend(v.to_le_bytes());
            }
            p
        };
        out.extend(phdr(elf::PT_NOTE, notes_at, 0, notes.len() as u64, 0));
        let mut body = Vec::new();
        for (vaddr, bytes) in segments {
            let memsz = (bytes.len() as u64).max(4096);
            out.extend(phdr(
                elf::PT_LOAD,
                data_at,
                *vaddr,
                bytes.len() as u64,
                memsz,
            ));
            body.push((data_at, bytes));
            data_at += bytes.len() as u64;
        }
        out.extend(&notes);
        for (at, bytes) in body {
            out.resize(at as usize, 0);
            out.extend(bytes.iter());
        }
        out
    }

    fn sample() -> Vec<u8> {
        let stack: Vec<u8> = (0..8192u32)
            .flat_map(|i| (i as u16).to_le_bytes())
            .collect();
        core(
            (0x1010, 0x7000_1000, 0x7000_1100),
            &[
                (0x1000, 0x2000, 0, "/bin/app"),
                (0x5000, 0x6000, 0, "/lib/libc.so.6"),
            ],
            &[
                (0x1000, b"\x7fELF-app".repeat(10)),
                (0x5000, b"\x7fELF-libc".repeat(10)),
                (0x7000_0000, stack),
            ],
        )
    }

    fn check(core: &Core) {
        assert_eq!(core.machine, Some(Machine::X86_64));
        assert_eq!(core.notes.files.len(), 2);
        assert_eq!(core.regs().unwrap().pc, 0x1010);
        assert!(core.problems.is_empty(), "{:?}", core.problems);
        assert_eq!(core.memory.read(0x1000, 8).unwrap(), b"\x7fELF-app");
        assert_eq!(core.memory.read(0x5000, 9).unwrap(), b"\x7fELF-libc");
        // The stack from SP: the u16 counter at 0x1000 bytes into the segment.
        assert_eq!(
            core.memory.read(0x7000_1000, 2).unwrap(),
            &(0x800u16).to_le_bytes()
        );
        assert!(core.memory.read(0x7000_0ff8, 2).is_none(), "below SP");
    }

    #[test]
    fn a_stream_in_any_chunking_gives_the_same_report() {
        let data = sample();
        for chunk in [1, 7, 64, 4096, 1 << 20] {
            let mut s = Scanner::new(Limits::default());
            for (i, c) in data.chunks(chunk).enumerate() {
                s.feed((i * chunk) as u64, c);
            }
            assert!(s.done(), "chunk {chunk}");
            check(&s.finish());
        }
        check(&scan_stream(Limits::default(), &mut &data[..]));
    }

    #[test]
    fn a_seekable_core_is_read_only_where_needed() {
        let data = sample();
        let mut read = 0usize;
        let core = scan_at(Limits::default(), |at, buf| {
            let at = at as usize;
            let n = buf.len().min(data.len().saturating_sub(at));
            buf[..n].copy_from_slice(&data[at..at + n]);
            read += n;
            Ok(n)
        });
        check(&core);
        // Not the stack below SP, nor the 4 KiB padding before the memory.
        assert!(read < data.len() - 6000, "read {read} of {}", data.len());
    }

    #[test]
    fn limits_bound_what_is_kept() {
        let data = sample();
        let limits = Limits {
            stack: 64,
            headers: 1,
            header_bytes: 4,
            ..Limits::default()
        };
        let core = scan_stream(limits, &mut &data[..]);
        assert_eq!(core.memory.read(0x7000_1000, 1000).unwrap().len(), 64);
        assert_eq!(core.memory.read(0x1000, 100).unwrap(), b"\x7fELF");
        assert!(core.memory.read(0x5000, 1).is_none());
        assert!(
            core.problems[0].contains("only the first 1"),
            "{:?}",
            core.problems
        );
    }

    #[test]
    fn what_is_not_a_core_says_so() {
        let cut = &sample()[..200];
        let core = scan_stream(Limits::default(), &mut &cut[..]);
        assert!(
            core.problems[0].contains("the core ends"),
            "{:?}",
            core.problems
        );
        let core = scan_stream(Limits::default(), &mut &b"#!/bin/sh\n"[..]);
        assert_eq!(core.machine, None);
        assert!(!core.problems.is_empty());
        let mut exe = sample();
        exe[16] = elf::ET_EXEC as u8;
        let core = scan_stream(Limits::default(), &mut &exe[..]);
        assert!(core.problems[0].contains("not a core"));
        // A stack pointer no segment holds.
        let data = core_with_sp(0x9999_0000);
        let core = scan_stream(Limits::default(), &mut &data[..]);
        assert!(core.problems.iter().any(|p| p.contains("not in the core")));
    }

    fn core_with_sp(sp: u64) -> Vec<u8> {
        core((0x1010, sp, 0), &[], &[(0x1000, vec![1; 16])])
    }
}

//! report::notes: what the kernel wrote into an ELF core's `PT_NOTE` segment, read as hostile
//! input (the crashed process chose its file names, its arguments, even its registers).
//!
//! Linux writes the notes of the thread that dumped first (`NT_PRSTATUS`, `NT_PRPSINFO`,
//! `NT_SIGINFO`, `NT_AUXV`, `NT_FILE`, then its FP state), then the other threads'. Only
//! 64-bit little-endian cores are read (x86_64, aarch64, and any other such machine for the
//! module list). Every length is checked; a damaged note ends the reading where it is damaged,
//! and what came before is kept.

use object::{
    LittleEndian as LE,
    elf::{self, FileHeader64},
    read::elf::NoteIterator,
};
use serde::{Deserialize, Serialize};

/// The CPU a core is of, from its `e_machine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Machine {
    /// `EM_X86_64`.
    X86_64,
    /// `EM_AARCH64`.
    Aarch64,
    /// Another machine: modules and build-ids, no registers.
    Other(u16),
}

impl Machine {
    /// From `e_machine`.
    pub fn from_elf(e_machine: u16) -> Self {
        match e_machine {
            elf::EM_X86_64 => Self::X86_64,
            elf::EM_AARCH64 => Self::Aarch64,
            other => Self::Other(other),
        }
    }

    /// Its usual name.
    pub fn name(self) -> String {
        match self {
            Self::X86_64 => "x86_64".into(),
            Self::Aarch64 => "aarch64".into(),
            Self::Other(m) => format!("e_machine {m}"),
        }
    }
}

/// The registers the unwinder starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// Program counter (`rip`, `pc`).
    pub pc: u64,
    /// Stack pointer (`rsp`, `sp`).
    pub sp: u64,
    /// Frame pointer (`rbp`, `x29`).
    pub fp: u64,
    /// Link register (`x30`; none on x86_64).
    pub lr: Option<u64>,
}

/// A thread's `NT_PRSTATUS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thread {
    /// `pr_pid`: its tid, as its own pid namespace numbers it.
    pub tid: i32,
    /// `pr_cursig`: the signal it was handling.
    pub cursig: u16,
    /// Its registers, when the machine is one this agent knows.
    pub regs: Option<Regs>,
}

/// `NT_SIGINFO` of the dumping thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigInfo {
    /// `si_signo`.
    pub signo: i32,
    /// `si_code`.
    pub code: i32,
    /// `si_errno`.
    pub errno: i32,
    /// `si_addr`, for the faults that have one (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP)
    /// raised by the kernel (`si_code` > 0).
    pub addr: Option<u64>,
    /// `si_pid` and `si_uid`, for a signal sent by a process (`si_code` <= 0).
    pub sender: Option<(i32, u32)>,
}

/// `NT_PRPSINFO`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PsInfo {
    /// `pr_fname`: the process's comm.
    pub fname: String,
    /// `pr_psargs`: the start of its command line (80 bytes).
    pub args: String,
    /// `pr_pid`.
    pub pid: i32,
    /// `pr_uid`.
    pub uid: u32,
}

/// One mapping of a file, from `NT_FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMapping {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Offset in the file, in bytes.
    pub offset: u64,
    /// The file's path, as the process saw it (`(deleted)` appended when it was unlinked).
    pub path: String,
}

/// Selected `NT_AUXV` entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Auxv {
    /// `AT_PHDR`: where the executable's program headers are mapped.
    pub phdr: Option<u64>,
    /// `AT_ENTRY`: the executable's entry point.
    pub entry: Option<u64>,
    /// `AT_SYSINFO_EHDR`: the vDSO.
    pub vdso: Option<u64>,
}

/// Everything read from the notes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// Every thread, the one that dumped first.
    pub threads: Vec<Thread>,
    /// The dumping thread's signal.
    pub siginfo: Option<SigInfo>,
    /// The process.
    pub psinfo: Option<PsInfo>,
    /// Selected auxiliary vector entries.
    pub auxv: Auxv,
    /// File mappings.
    pub files: Vec<FileMapping>,
    /// Why the notes are incomplete, if they are.
    pub problems: Vec<String>,
}

/// Most `NT_FILE` entries read: a process with more mappings than this is not usual.
pub const MAX_FILES: u64 = 1 << 18;
/// Longest path kept from `NT_FILE` (PATH_MAX).
const MAX_PATH: usize = 4096;

/// Offset of `pr_reg` in `struct elf_prstatus` (64-bit): `elf_siginfo` (12), `pr_cursig` (2 +
/// 2), `pr_sigpend`, `pr_sighold` (8 + 8), four pids (16), four `timeval`s (64).
const PR_REG: usize = 112;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    u32_at(b, at).map(|v| v as i32)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A NUL-terminated string of a fixed-size field, lossily decoded.
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses `NT_PRSTATUS`.
pub fn prstatus(machine: Machine, desc: &[u8]) -> Option<Thread> {
    let reg = |i: usize| u64_at(desc, PR_REG + i * 8);
    let regs = match machine {
        // user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
        // orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs.
        Machine::X86_64 => Some(Regs {
            pc: reg(16)?,
            sp: reg(19)?,
            fp: reg(4)?,
            lr: None,
        }),
        // user_pt_regs: x0..x30, sp, pc, pstate.
        Machine::Aarch64 => Some(Regs {
            pc: reg(32)?,
            sp: reg(31)?,
            fp: reg(29)?,
            lr: Some(reg(30)?),
        }),
        Machine::Other(_) => None,
    };
    Some(Thread {
        tid: i32_at(desc, 32)?,
        cursig: u16_at(desc, 12)?,
        regs,
    })
}

/// Parses `NT_SIGINFO` (a `siginfo_t`).
pub fn siginfo(desc: &[u8]) -> Option<SigInfo> {
    let signo = i32_at(desc, 0)?;
    let errno = i32_at(desc, 4)?;
    let code = i32_at(desc, 8)?;
    // The union starts at 16 on 64-bit machines.
    let faults = [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
    ];
    let addr = (code > 0 && faults.contains(&signo))
        .then(|| u64_at(desc, 16))
        .flatten();
    let sender = (code <= 0)
        .then(|| Some((i32_at(desc, 16)?, u32_at(desc, 20)?)))
        .flatten();
    Some(SigInfo {
        signo,
        code,
        errno,
        addr,
        sender,
    })
}

/// Parses `NT_PRPSINFO` (`struct elf_prpsinfo`, 64-bit).
pub fn prpsinfo(desc: &[u8]) -> Option<PsInfo> {
    Some(PsInfo {
        uid: u32_at(desc, 16)?,
        pid: i32_at(desc, 24)?,
        fname: c_string(desc.get(40..56)?),
        args: c_string(desc.get(56..136)?),
    })
}

/// Parses `NT_AUXV`.
pub fn auxv(desc: &[u8]) -> Auxv {
    let mut out = Auxv::default();
    for pair in desc.chunks_exact(16) {
        let (key, value) = (u64_at(pair, 0).unwrap_or(0), u64_at(pair, 8).unwrap_or(0));
        // AT_NULL, AT_PHDR, AT_ENTRY, AT_SYSINFO_EHDR (linux/auxvec.h).
        match key {
            0 => break,
            3 => out.phdr = Some(value),
            9 => out.entry = Some(value),
            33 => out.vdso = Some(value),
            _ => {}
        }
    }
    out
}

/// Parses `NT_FILE`: a count, the page size, `count` (start, end, page offset) triples, then
/// `count` NUL-terminated paths.
pub fn nt_file(desc: &[u8]) -> Result<Vec<FileMapping>, String> {
    let count = u64_at(desc, 0).ok_or("NT_FILE is shorter than its header")?;
    let page = u64_at(desc, 8).ok_or("NT_FILE is shorter than its header")?;
    if count > MAX_FILES {
        return Err(format!("NT_FILE claims {count} mappings"));
    }
    let count = count as usize;
    let table = count
        .checked_mul(24)
        .and_then(|t| t.checked_add(16))
        .filter(|&t| t <= desc.len())
        .ok_or_else(|| {
            format!(
                "NT_FILE claims {count} mappings but is {} bytes",
                desc.len()
            )
        })?;
    let mut names = desc[table..].split(|&c| c == 0);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = 16 + i * 24;
        let (start, end, pages) = (
            u64_at(desc, at).unwrap_or(0),
            u64_at(desc, at + 8).unwrap_or(0),
            u64_at(desc, at + 16).unwrap_or(0),
        );
        let Some(name) = names.next().filter(|n| !n.is_empty()) else {
            return Err(format!("NT_FILE names {i} of its {count} mappings"));
        };
        if start >= end {
            return Err(format!("NT_FILE mapping {i} is empty or reversed"));
        }
        let name = &name[..name.len().min(MAX_PATH)];
        out.push(FileMapping {
            start,
            end,
            offset: pages.saturating_mul(page),
            path: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(out)
}

/// Reads the notes of one `PT_NOTE` segment into `notes`.
pub fn read(machine: Machine, data: &[u8], notes: &mut Notes) {
    let mut iter = match NoteIterator::<FileHeader64<LE>>::new(LE, 4, data) {
        Ok(i) => i,
        Err(e) => {
            notes
                .problems
                .push(format!("the notes cannot be read: {e}"));
            return;
        }
    };
    let mut read = 0usize;
    loop {
        let note = match iter.next() {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                notes
                    .problems
                    .push(format!("the notes are damaged after {read} notes: {e}"));
                break;
            }
        };
        read += 1;
        // Core notes are named "CORE" (and "LINUX" for the machine-specific ones).
        if note.name() != b"CORE" {
            continue;
        }
        let desc = note.desc();
        match note.n_type(LE) {
            elf::NT_PRSTATUS => match prstatus(machine, desc) {
                Some(t) => notes.threads.push(t),
                None => notes
                    .problems
                    .push(format!("NT_PRSTATUS of {} bytes is too short", desc.len())),
            },
            elf::NT_SIGINFO if notes.siginfo.is_none() => notes.siginfo = siginfo(desc),
            elf::NT_PRPSINFO if notes.psinfo.is_none() => notes.psinfo = prpsinfo(desc),
            elf::NT_AUXV if notes.auxv == Auxv::default() => notes.auxv = auxv(desc),
            elf::NT_FILE if notes.files.is_empty() => match nt_file(desc) {
                Ok(files) => notes.files = files,
                Err(e) => notes.problems.push(format!("NT_FILE is damaged: {e}")),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One note as the kernel writes it: name and desc padded to 4 bytes.
    pub fn note(n_type: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let name_z: Vec<u8> = name.iter().copied().chain([0]).collect();
        out.extend((name_z.len() as u32).to_le_bytes());
        out.extend((desc.len() as u32).to_le_bytes());
        out.extend(n_type.to_le_bytes());
        out.extend(&name_z);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// An x86_64 `NT_PRSTATUS` for `tid` with these registers.
    pub fn prstatus_x86(tid: i32, sig: u16, pc: u64, sp: u64, fp: u64) -> Vec<u8> {
        let mut d = vec![0u8; 336];
        d[12..14].copy_from_slice(&sig.to_le_bytes());
        d[32..36].copy_from_slice(&tid.to_le_bytes());
        for (i, v) in [(4, fp), (16, pc), (19, sp)] {
            d[PR_REG + i * 8..PR_REG + i * 8 + 8].copy_from_slice(&u64::to_le_bytes(v));
        }
        d
    }

    /// `NT_FILE` for mappings `(start, end, page offset, path)`.
    pub fn nt_file_desc(maps: &[(u64, u64, u64, &str)]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend((maps.len() as u64).to_le_bytes());
        d.extend(4096u64.to_le_bytes());
        for (s, e, o, _) in maps {
            for v in [s, e, o] {
                d.extend(v.to_le_bytes());
            }
        }
        for (.., p) in maps {
            d.extend(p.as_bytes());
            d.push(0);
        }
        d
    }

    #[test]
    fn registers_come_from_the_machines_layout() {
        let t = prstatus(
            Machine::X86_64,
            &prstatus_x86(7, 11, 0x401000, 0x7ffc0000, 0x7ffc0040),
        )
        .unwrap();
        assert_eq!((t.tid, t.cursig), (7, 11));
        assert_eq!(
            t.regs,
            Some(Regs {
                pc: 0x401000,
                sp: 0x7ffc0000,
                fp: 0x7ffc0040,
                lr: None
            })
        );
        let mut a = vec![0u8; 392];
        for (i, v) in [(29u64, 0xf0u64), (30, 0x1e), (31, 0x5000), (32, 0x400)] {
            let at = PR_REG + i as usize * 8;
            a[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let t = prstatus(Machine::Aarch64, &a).unwrap();
        assert_eq!(
            t.regs,
            Some(Regs {
                pc: 0x400,
                sp: 0x5000,
                fp: 0xf0,
                lr: Some(0x1e)
            })
        );
        assert!(prstatus(Machine::X86_64, &[0u8; 200]).is_none(), "short");
        assert_eq!(
            prstatus(Machine::Other(40), &[0u8; 200]).unwrap().regs,
            None
        );
    }

    #[test]
    fn siginfo_has_the_fault_address_only_for_faults() {
        let mut d = vec![0u8; 128];
        d[0..4].copy_from_slice(&11i32.to_le_bytes());
        d[8..12].copy_from_slice(&1i32.to_le_bytes());
        d[16..24].copy_from_slice(&0xdeadu64.to_le_bytes());
        let s = siginfo(&d).unwrap();
        assert_eq!(
            (s.signo, s.code, s.addr, s.sender),
            (11, 1, Some(0xdead), None)
        );
        // abort(): SIGABRT sent by the process itself (SI_TKILL).
        d[0..4].copy_from_slice(&6i32.to_le_bytes());
        d[8..12].copy_from_slice(&(-6i32).to_le_bytes());
        d[16..20].copy_from_slice(&42i32.to_le_bytes());
        d[20..24].copy_from_slice(&1000u32.to_le_bytes());
        let s = siginfo(&d).unwrap();
        assert_eq!((s.addr, s.sender), (None, Some((42, 1000))));
    }

    #[test]
    fn nt_file_is_read_and_its_lies_are_caught() {
        let d = nt_file_desc(&[
            (0x1000, 0x3000, 0, "/bin/app"),
            (0x3000, 0x4000, 2, "/bin/app"),
        ]);
        let files = nt_file(&d).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].offset, 2 * 4096);
        assert_eq!(files[1].path, "/bin/app");
        // A count larger than the note.
        let mut lie = d.clone();
        lie[0..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(nt_file(&lie).unwrap_err().contains("1000"));
        let mut huge = d.clone();
        huge[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(nt_file(&huge).is_err());
        // Names missing.
        let cut = &d[..d.len() - 9];
        assert!(nt_file(cut).is_err());
        assert!(nt_file(&[1, 2, 3]).is_err());
    }

    #[test]
    fn damaged_notes_keep_what_came_before() {
        let mut data = note(elf::NT_PRSTATUS, b"CORE", &prstatus_x86(1, 11, 1, 2, 3));
        let mut ps = vec![0u8; 136];
        ps[40..44].copy_from_slice(b"app\0");
        data.extend(note(elf::NT_PRPSINFO, b"CORE", &ps));
        // A note claiming a desc far larger than what follows.
        data.extend(5u32.to_le_bytes());
        data.extend(0x7fff_ffffu32.to_le_bytes());
        data.extend(elf::NT_FILE.to_le_bytes());
        data.extend(b"CORE\0\0\0\0");
        let mut notes = Notes::default();
        read(Machine::X86_64, &data, &mut notes);
        assert_eq!(notes.threads.len(), 1);
        assert_eq!(notes.psinfo.as_ref().unwrap().fname, "app");
        assert!(notes.files.is_empty());
        assert_eq!(notes.problems.len(), 1, "{:?}", notes.problems);
        assert!(notes.problems[0].contains("damaged after 2 notes"));
    }
}

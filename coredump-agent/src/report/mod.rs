//! report: what crashed, read from the core itself: the signal and where it hit, the
//! crashing thread's backtrace (function, module, offset; file and line with DWARF), every
//! mapped module with its GNU build-id, and a signature that is the same for the same crash.
//!
//! Pipeline: the intake gathers the [`Evidence`] while the crashed process is still there (the
//! core is [`scan`]ned as it streams in, the module [`files`] opened through `/proc`); the
//! [`stage`] between correlate and spool builds the [`Report`] off the async workers, within a
//! time budget, and puts it in the record. A dump whose evidence is gone (a restart, a file in
//! the dump directory) is scanned from its file instead. A report that cannot be completed says
//! what is missing and why; the dump is stored all the same.
//!
//! ```text
//! scan (notes, stack, first pages) ─► modules (NT_FILE + build-ids) ─► files verified by build-id
//!   ─► unwind (framehop: CFI, else frame pointers) ─► symbolize (blazesym) ─► signature
//! ```

pub mod files;
pub mod modules;
pub mod notes;
pub mod scan;
pub mod signature;
pub mod stage;
pub mod symbolize;
pub mod unwind;
pub mod upload;

use std::{
    fmt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use self::{
    files::{ModuleFiles, Via},
    modules::CoreModule,
    notes::Machine,
    scan::Core,
};
use crate::crash::Signal;

/// An address, written `0x…` in JSON (a JSON number cannot hold every 64-bit address).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr(pub u64);

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for Addr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let hex = s.strip_prefix("0x").unwrap_or(&s);
        u64::from_str_radix(hex, 16)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// A crash report: part of the record (`report`), fields only ever added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Whether everything could be read, unwound and symbolized; `problems` says what could
    /// not, and why.
    pub complete: bool,
    /// What is missing and why, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// `SIGSEGV in f ← g ← main`: the signal and the top frames past any crash machinery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// A stable hash of the top frames (module and function, or offset without a symbol):
    /// the same for the same crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// `x86_64`, `aarch64`, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// The signal, from the core's `NT_SIGINFO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalInfo>,
    /// The crashing thread's id (as its pid namespace numbers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<i32>,
    /// Its program counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pc: Option<Addr>,
    /// Its stack pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp: Option<Addr>,
    /// Threads in the core.
    #[serde(default)]
    pub threads: usize,
    /// The backtrace, innermost first.
    #[serde(default)]
    pub frames: Vec<Frame>,
    /// Every mapped ELF file.
    #[serde(default)]
    pub modules: Vec<Module>,
    /// How long building it took.
    #[serde(default)]
    pub millis: u64,
}

/// The signal that killed the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalInfo {
    /// Its name.
    pub name: String,
    /// `si_code`.
    pub code: i32,
    /// What `si_code` means (`SEGV_MAPERR`, `SI_TKILL`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_name: Option<String>,
    /// The faulting address (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP from the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Addr>,
    /// The pid that sent it, when a process did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_pid: Option<i32>,
}

/// One frame of the backtrace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The pc (first frame) or a return address.
    pub addr: Addr,
    /// The module's file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The address as the module numbers it (what `addr2line -e <module>` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Addr>,
    /// The function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Bytes into the function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_offset: Option<u64>,
    /// Source file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Source line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// A function inlined into the frame below it (same address).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

/// A mapped ELF file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Its path, as the process saw it.
    pub path: String,
    /// First mapped address.
    pub start: Addr,
    /// End of its mappings.
    pub end: Addr,
    /// Load bias (where its address 0 is), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Addr>,
    /// GNU build-id, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The executable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub main: bool,
    /// Deleted from its filesystem before the crash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// How its file was found (and checked); none when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Via>,
    /// Its key in the store (`<prefix>/_modules/<build-id>/<name>`), once stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why its file was not used, or not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Module {
    /// The file name.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

impl Report {
    /// The executable's module.
    pub fn main(&self) -> Option<&Module> {
        self.modules.iter().find(|m| m.main)
    }

    /// A report that could not be built at all.
    pub fn failed(why: String) -> Self {
        Self {
            complete: false,
            problems: vec![why],
            ..Self::default()
        }
    }
}

/// What the intake gathered for a report while the crashed process was there. In memory only
/// (a restart loses it: the report is then built from the stored dump alone).
#[derive(Debug, Default)]
pub struct Evidence {
    /// The core, scanned on its way in; `None`: scan the dump file.
    pub core: Option<Core>,
    /// The module files, opened through `/proc/<pid>`.
    pub files: Arc<ModuleFiles>,
}

/// How reports are built.
#[derive(Clone, Debug)]
pub struct Config {
    /// Reports off (`--report off`).
    pub enabled: bool,
    /// What a scan keeps.
    pub limits: scan::Limits,
    /// Time for one report; what is not done by then is left out, and said so.
    pub budget: Duration,
    /// Where private copies of module files are made (nameless, in the agent's own
    /// directory).
    pub scratch: PathBuf,
    /// Module files larger than this are not copied to be symbolized (nor stored).
    pub max_module_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            limits: scan::Limits::default(),
            budget: Duration::from_secs(10),
            scratch: std::env::temp_dir(),
            max_module_size: 512 << 20,
        }
    }
}

/// The name of `si_code` for `signo` (`siginfo.h`).
pub fn si_code_name(signo: i32, code: i32) -> Option<&'static str> {
    Some(match (signo, code) {
        (_, 0) => "SI_USER",
        (_, 0x80) => "SI_KERNEL",
        (_, -1) => "SI_QUEUE",
        (_, -2) => "SI_TIMER",
        (_, -3) => "SI_MESGQ",
        (_, -4) => "SI_ASYNCIO",
        (_, -6) => "SI_TKILL",
        (libc::SIGSEGV, 1) => "SEGV_MAPERR",
        (libc::SIGSEGV, 2) => "SEGV_ACCERR",
        (libc::SIGSEGV, 3) => "SEGV_BNDERR",
        (libc::SIGSEGV, 4) => "SEGV_PKUERR",
        (libc::SIGSEGV, 9) => "SEGV_CPERR",
        (libc::SIGBUS, 1) => "BUS_ADRALN",
        (libc::SIGBUS, 2) => "BUS_ADRERR",
        (libc::SIGBUS, 3) => "BUS_OBJERR",
        (libc::SIGBUS, 4) => "BUS_MCEERR_AR",
        (libc::SIGILL, 1) => "ILL_ILLOPC",
        (libc::SIGILL, 2) => "ILL_ILLOPN",
        (libc::SIGILL, 3) => "ILL_ILLADR",
        (libc::SIGILL, 4) => "ILL_ILLTRP",
        (libc::SIGILL, 5) => "ILL_PRVOPC",
        (libc::SIGILL, 8) => "ILL_BADSTK",
        (libc::SIGFPE, 1) => "FPE_INTDIV",
        (libc::SIGFPE, 2) => "FPE_INTOVF",
        (libc::SIGFPE, 3) => "FPE_FLTDIV",
        (libc::SIGFPE, 4) => "FPE_FLTOVF",
        (libc::SIGFPE, 5) => "FPE_FLTUND",
        (libc::SIGFPE, 6) => "FPE_FLTRES",
        (libc::SIGFPE, 7) => "FPE_FLTINV",
        (libc::SIGTRAP, 1) => "TRAP_BRKPT",
        (libc::SIGTRAP, 2) => "TRAP_TRACE",
        (libc::SIGSYS, 1) => "SYS_SECCOMP",
        _ => return None,
    })
}

/// A module of the core with its file checked against the core's build-id.
struct Checked<'f> {
    core: CoreModule,
    file: Option<&'f files::Opened>,
    bias: Option<u64>,
    build_id: Option<String>,
    note: Option<String>,
}

/// Checks the file opened for `m` (if any) against what the core says of it. A file is used
/// only when its build-id is the core's, or, when the core has none for it, when the kernel
/// itself handed it over (`map_files`).
fn check<'f>(m: CoreModule, files: &'f ModuleFiles) -> Checked<'f> {
    let mut out = Checked {
        bias: m.bias,
        build_id: m.build_id.clone(),
        file: None,
        note: None,
        core: m,
    };
    let Some(opened) = files.get(out.core.start) else {
        out.note = Some("no file: the process was gone, or its file could not be opened".into());
        return out;
    };
    let facts = match files::facts(&opened.file) {
        Ok(f) => f,
        Err(e) => {
            out.note = Some(format!("its file is not a readable ELF file: {e}"));
            return out;
        }
    };
    match (&out.core.build_id, &facts.build_id, opened.via) {
        (Some(core), Some(file), _) if core == file => out.file = Some(opened),
        (Some(core), Some(file), _) => {
            out.note = Some(format!(
                "the file found has build-id {file}, not the core's {core}: not used"
            ));
        }
        (Some(_), None, _) => out.note = Some("the file found has no build-id: not used".into()),
        (None, id, Via::MapFiles) => {
            out.file = Some(opened);
            out.build_id = id.clone();
            out.note = Some(
                "its first page is not in the core: build-id read from the very file it mapped"
                    .into(),
            );
        }
        (None, _, Via::Root) => {
            out.note = Some(
                "the core has no build-id for it, so the file found by its path cannot be checked: not used"
                    .into(),
            );
        }
    }
    if out.file.is_some() && out.bias.is_none() {
        let header = modules::ElfHeader {
            loads: facts.loads,
            ..modules::ElfHeader::default()
        };
        out.bias = header.bias(out.core.start);
    }
    out
}

/// Builds the report of `core`, with the module `files` opened for it, within `cfg.budget`.
/// Blocking (file reads, DWARF): call from a blocking thread.
pub fn build(core: &Core, files: &ModuleFiles, cfg: &Config) -> Report {
    let started = Instant::now();
    let deadline = started + cfg.budget;
    let mut problems: Vec<String> = core.problems.clone();
    problems.extend(core.notes.problems.iter().cloned());
    let machine = core.machine;
    let thread = core.notes.threads.first();
    let regs = thread.and_then(|t| t.regs);
    let signal = core
        .notes
        .siginfo
        .map(|s| SignalInfo {
            name: Signal(s.signo.unsigned_abs()).to_string(),
            code: s.code,
            code_name: si_code_name(s.signo, s.code).map(str::to_owned),
            addr: s.addr.map(Addr),
            sender_pid: s.sender.map(|(pid, _)| pid),
        })
        .or_else(|| {
            thread.filter(|t| t.cursig != 0).map(|t| SignalInfo {
                name: Signal(u32::from(t.cursig)).to_string(),
                ..SignalInfo::default()
            })
        });
    if machine.is_some() && thread.is_none() && !core.problems.iter().any(|p| p.contains("notes")) {
        problems.push("the core has no thread status (NT_PRSTATUS)".into());
    }
    if machine.is_some() && core.notes.files.is_empty() {
        problems.push("the core lists no mapped files (no NT_FILE note)".into());
    }

    let checked: Vec<Checked<'_>> = modules::from_core(core)
        .into_iter()
        .map(|m| check(m, files))
        .collect();
    let without_file = checked.iter().filter(|c| c.file.is_none()).count();

    // Unwind.
    let mut stack = unwind::Stack::default();
    match (machine, regs) {
        (Some(machine), Some(regs)) => {
            let mut unwind_modules: Vec<unwind::UnwindModule<'_>> = checked
                .iter()
                .map(|c| unwind::UnwindModule {
                    name: c.core.name().to_owned(),
                    range: c.core.start..c.core.end,
                    bias: c.bias.unwrap_or(c.core.start),
                    sections: c.file.map(|f| {
                        Box::new(move || files::unwind_sections(&f.file).ok())
                            as Box<dyn FnMut() -> Option<files::UnwindSections>>
                    }),
                })
                .collect();
            stack = unwind::unwind(machine, regs, &core.memory, &mut unwind_modules, deadline);
            if let Some(why) = &stack.stopped {
                problems.push(why.clone());
            }
        }
        (Some(m), None) if matches!(m, Machine::Other(_)) => {
            problems.push(format!("registers of {} are not read", m.name()));
        }
        (Some(_), None) => problems.push("no registers for the crashing thread".into()),
        (None, _) => {}
    }

    // Frames, with their modules.
    let mut frames: Vec<(Frame, Option<usize>, u64)> = stack
        .frames
        .iter()
        .map(|f| {
            let (addr, lookup) = (f.address(), f.address_for_lookup());
            let module = checked.iter().position(|c| c.core.contains(lookup));
            let frame = Frame {
                addr: Addr(addr),
                module: module.map(|i| checked[i].core.name().to_owned()),
                offset: module.and_then(|i| {
                    let base = checked[i].bias?;
                    addr.checked_sub(base).map(Addr)
                }),
                ..Frame::default()
            };
            (frame, module, lookup)
        })
        .collect();

    // Symbolize, module by module, from private copies.
    let mut wanted: Vec<usize> = frames.iter().filter_map(|(_, m, _)| *m).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut symbols: Vec<Option<symbolize::Symbol>> = vec![None; frames.len()];
    for i in wanted {
        let c = &checked[i];
        let Some(opened) = c.file else {
            problems.push(format!(
                "{}: not symbolized ({})",
                c.core.name(),
                c.note.as_deref().unwrap_or("no file")
            ));
            continue;
        };
        let Some(bias) = c.bias else {
            problems.push(format!("{}: its load address is unknown", c.core.name()));
            continue;
        };
        if Instant::now() > deadline {
            problems.push(format!(
                "{}: not symbolized, the time budget ran out",
                c.core.name()
            ));
            continue;
        }
        if opened.size > cfg.max_module_size {
            problems.push(format!(
                "{}: not symbolized, {} bytes is over --max-module-size",
                c.core.name(),
                opened.size
            ));
            continue;
        }
        let at: Vec<usize> = (0..frames.len())
            .filter(|&j| frames[j].1 == Some(i))
            .collect();
        let addrs: Vec<u64> = at.iter().map(|&j| frames[j].2.wrapping_sub(bias)).collect();
        let result = symbolize::PrivateCopy::new(&opened.file, opened.size, &cfg.scratch)
            .map_err(|e| format!("copying it: {e}"))
            .and_then(|copy| symbolize::symbolize(&copy, &addrs));
        match result {
            Ok(syms) => {
                for (j, sym) in at.into_iter().zip(syms) {
                    symbols[j] = sym;
                }
            }
            Err(e) => problems.push(format!("{}: not symbolized: {e}", c.core.name())),
        }
    }
    let mut out_frames = Vec::with_capacity(frames.len());
    for ((mut frame, _, _), sym) in frames.drain(..).zip(symbols) {
        if let Some(sym) = sym {
            // Inlined functions first, innermost first, each at the same address.
            for (name, file, line) in sym.inlined.iter().rev() {
                out_frames.push(Frame {
                    function: Some(name.clone()),
                    file: file.clone(),
                    line: *line,
                    inlined: true,
                    ..frame.clone()
                });
            }
            frame.function = Some(sym.function);
            frame.function_offset = Some(sym.offset);
            frame.file = sym.file;
            frame.line = sym.line;
        }
        out_frames.push(frame);
    }

    let modules_out: Vec<Module> = checked
        .iter()
        .map(|c| Module {
            path: c.core.path.clone(),
            start: Addr(c.core.start),
            end: Addr(c.core.end),
            base: c.bias.map(Addr),
            build_id: c.build_id.clone(),
            main: c.core.main,
            deleted: c.core.deleted,
            file: c.file.map(|f| f.via),
            key: None,
            note: c.note.clone(),
        })
        .collect();
    if without_file > 0 && out_frames.iter().any(|f| f.function.is_none()) {
        problems.extend(files.problems.iter().cloned());
    }
    if let Some(main) = modules_out.iter().find(|m| m.main)
        && main.build_id.is_none()
    {
        problems.push(format!("{}: no build-id", main.name()));
    }
    let signal_name = signal.as_ref().map_or("crash", |s| s.name.as_str());
    let summary = Some(signature::summary(signal_name, &out_frames))
        .filter(|_| signal.is_some() || !out_frames.is_empty());
    problems.dedup();
    Report {
        complete: problems.is_empty(),
        problems,
        signature: signature::signature(&out_frames),
        summary,
        arch: machine.map(Machine::name),
        signal,
        thread: thread.map(|t| t.tid),
        pc: regs.map(|r| Addr(r.pc)),
        sp: regs.map(|r| Addr(r.sp)),
        threads: core.notes.threads.len(),
        frames: out_frames,
        modules: modules_out,
        millis: started.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_hex_in_json() {
        let f = Frame {
            addr: Addr(0x7f00_dead_beef),
            offset: Some(Addr(0x1149)),
            ..Frame::default()
        };
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["addr"], "0x7f00deadbeef");
        assert_eq!(json["offset"], "0x1149");
        assert!(json.get("function").is_none());
        let back: Frame = serde_json::from_value(json).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn a_core_scanned_without_files_still_names_the_modules_and_the_pc() {
        let mut data = scan::tests::core(
            (0x1010, 0x7000_0000, 0),
            &[(0x1000, 0x2000, 0, "/bin/app")],
            &[
                (0x1000, modules::tests::elf_page(0, &[0xab; 20])),
                (0x7000_0000, vec![0; 64]),
            ],
        );
        // Make it the executable (AT_PHDR) — not needed for the module list.
        data.truncate(data.len());
        let core = scan::scan_stream(scan::Limits::default(), &mut &data[..]);
        let report = build(&core, &ModuleFiles::default(), &Config::default());
        assert_eq!(report.arch.as_deref(), Some("x86_64"));
        assert_eq!(report.pc, Some(Addr(0x1010)));
        assert_eq!(report.signal.as_ref().unwrap().name, "SIGSEGV");
        assert_eq!(
            report.signal.as_ref().unwrap().code_name.as_deref(),
            Some("SEGV_MAPERR")
        );
        assert_eq!(report.modules.len(), 1);
        assert_eq!(
            report.modules[0].build_id.as_deref(),
            Some(&*"ab".repeat(20))
        );
        assert_eq!(report.frames[0].module.as_deref(), Some("app"));
        assert_eq!(report.frames[0].offset, Some(Addr(0x10)));
        assert!(!report.complete);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("app: not symbolized")),
            "{:?}",
            report.problems
        );
        assert_eq!(report.summary.as_deref(), Some("SIGSEGV in app+0x10"));
        assert!(report.signature.is_some());
    }

    #[test]
    fn garbage_is_a_failed_report_not_a_panic() {
        for data in [&b""[..], b"\x7fELF", &[0xffu8; 5000]] {
            let core = scan::scan_stream(scan::Limits::default(), &mut &data[..]);
            let report = build(&core, &ModuleFiles::default(), &Config::default());
            assert!(!report.complete);
            assert!(!report.problems.is_empty());
        }
    }
}

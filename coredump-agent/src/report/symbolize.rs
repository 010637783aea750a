//! report::symbolize: function names, and source lines where DWARF is present, for addresses
//! in a module file, with blazesym (its ELF symbol tables and DWARF).
//!
//! blazesym maps the file it reads. A module file belongs to the crashed process's world: one
//! in a writable volume could be truncated while it is mapped, and the agent would die of
//! SIGBUS. So it reads a private copy, made in the agent's own directory without a name
//! (`O_TMPFILE`: gone when closed), copied in the kernel (`copy_file_range`, positional, so
//! the original's shared offset stays put). Only the modules the backtrace passes through are
//! copied. Separate debug files are not looked for: they would come from the agent's
//! filesystem, not the crashed process's.
//!
//! Blocking: call from a blocking thread.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

/// What an address is in a module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Symbol {
    /// The function (demangled).
    pub function: String,
    /// The address's offset from the function's start.
    pub offset: u64,
    /// Source file, when DWARF says.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// Functions inlined at the address, outermost first: (name, file, line).
    pub inlined: Vec<(String, Option<String>, Option<u32>)>,
}

/// A private copy of a module file, to map without risk.
pub struct PrivateCopy {
    file: File,
}

impl PrivateCopy {
    /// Copies `size` bytes of `from` into a nameless file in `dir`.
    pub fn new(from: &File, size: u64, dir: &Path) -> io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let file = File::from(fd);
        let mut at = 0u64;
        while at < size {
            let mut off_in = at;
            let n = match rustix::fs::copy_file_range(
                from,
                Some(&mut off_in),
                &file,
                None,
                (size - at).min(1 << 30) as usize,
            ) {
                Ok(n) => n,
                // Across filesystems on older kernels, or a filesystem without it.
                Err(
                    rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL,
                ) => {
                    return Self::by_reads(from, size, file);
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(io::Error::other(format!(
                    "the file shrank to {at} bytes while it was copied"
                )));
            }
            at += n as u64;
        }
        Ok(Self { file })
    }

    fn by_reads(from: &File, size: u64, file: File) -> io::Result<Self> {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < size {
            let want = (size - at).min(buf.len() as u64) as usize;
            let n = from.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(io::Error::other("the file shrank while it was copied"));
            }
            file.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        Ok(Self { file })
    }

    /// A path to it that this process can open.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Symbolizes addresses as the module states them (`pc` minus the load bias) in `copy`.
pub fn symbolize(copy: &PrivateCopy, addrs: &[u64]) -> Result<Vec<Option<Symbol>>, String> {
    // A symbolizer of its own: blazesym caches files by path, and the next copy may get the
    // same `/proc/self/fd/N` once this one is closed.
    let symbolizer = symbolizer();
    let mut elf = Elf::new(copy.path());
    elf.debug_syms = true;
    let src = Source::Elf(elf);
    let out = symbolizer
        .symbolize(&src, Input::VirtOffset(addrs))
        .map_err(|e| e.to_string())?;
    Ok(out
        .into_iter()
        .map(|s| match s {
            // A symbol without a size only says where something starts: in a stripped library
            // the nearest one may be a linker marker (`_end`) far away. Not a name for the
            // address.
            Symbolized::Sym(sym) if sym.size.unwrap_or(0) == 0 && sym.offset > 0 => None,
            Symbolized::Sym(sym) => Some(Symbol {
                function: sym.name.into_owned(),
                offset: sym.offset as u64,
                file: sym
                    .code_info
                    .as_ref()
                    .map(|c| c.to_path().display().to_string()),
                line: sym.code_info.as_ref().and_then(|c| c.line),
                inlined: sym
                    .inlined
                    .iter()
                    .map(|i| {
                        (
                            i.name.to_string(),
                            i.code_info
                                .as_ref()
                                .map(|c| c.to_path().display().to_string()),
                            i.code_info.as_ref().and_then(|c| c.line),
                        )
                    })
                    .collect(),
            }),
            Symbolized::Unknown(_) => None,
        })
        .collect())
}

/// A symbolizer that looks nowhere but in the files it is given.
fn symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .enable_auto_reload(false)
        .set_debug_dirs(Some(Vec::<PathBuf>::new()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn report_symbolize_marker() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn a_function_of_this_binary_is_named_from_a_private_copy() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let file = File::open(&exe).unwrap();
        let size = file.metadata().unwrap().len();
        let copy = PrivateCopy::new(&file, size, &std::env::temp_dir()).unwrap();
        assert_eq!(copy.file.metadata().unwrap().len(), size);
        // The marker's address as the file states it: its runtime address minus the bias.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe_s = exe.to_str().unwrap();
        let first = crate::report::files::from_maps(&maps)
            .into_iter()
            .find(|w| w.path == exe_s)
            .unwrap();
        let facts = crate::report::files::facts(&file).unwrap();
        let header = crate::report::modules::ElfHeader {
            loads: facts.loads,
            ..Default::default()
        };
        let bias = header.bias(first.start).unwrap();
        let addr = report_symbolize_marker as *const () as u64 - bias + 3;
        let syms = symbolize(&copy, &[addr, 0xffff_ffff_0000]).unwrap();
        let sym = syms[0].as_ref().expect("symbolized");
        assert!(
            sym.function.ends_with("::report_symbolize_marker"),
            "{sym:?}"
        );
        assert_eq!(sym.offset, 3);
        assert!(
            sym.file.as_deref().unwrap_or("").ends_with("symbolize.rs"),
            "{sym:?}"
        );
        assert_eq!(syms[1], None);
    }
}

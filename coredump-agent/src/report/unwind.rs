//! report::unwind: the crashing thread's return addresses, from its registers and the stack
//! kept by the scan, with the CFI (`.eh_frame`, `.debug_frame`) of the real module files;
//! framehop falls back to frame pointers where a module has none (or no file was found).
//!
//! Modules are given to the unwinder only when the unwinding reaches them: a process maps
//! dozens of libraries and a crash walks through three or four.

use std::ops::Range;

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    aarch64::{CacheAarch64, PtrAuthMask, UnwindRegsAarch64, UnwinderAarch64},
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use super::{
    files::UnwindSections,
    notes::{Machine, Regs},
    scan::Memory,
};

/// Most frames unwound.
pub const MAX_FRAMES: usize = 256;

/// A module the unwinder may use: its mapped range, load bias, and (lazily) unwind sections.
pub struct UnwindModule<'a> {
    /// Its name, for messages.
    pub name: String,
    /// Mapped addresses.
    pub range: Range<u64>,
    /// Load bias.
    pub bias: u64,
    /// Reads its unwind sections (`None`: no file, frame pointers only).
    pub sections: Option<Box<dyn FnMut() -> Option<UnwindSections> + 'a>>,
}

/// The unwound stack: addresses, innermost first (the first is the pc; the others return
/// addresses), and why it ended where it did, if not at the stack's root.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stack {
    /// Frame addresses.
    pub frames: Vec<FrameAddress>,
    /// Why unwinding stopped early.
    pub stopped: Option<String>,
}

fn section_info(s: UnwindSections) -> ExplicitModuleSectionInfo<Vec<u8>> {
    let (eh_frame_svma, eh_frame) = s.eh_frame.unzip();
    let (eh_frame_hdr_svma, eh_frame_hdr) = s.eh_frame_hdr.unzip();
    ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: s.text,
        got_svma: s.got,
        eh_frame_svma,
        eh_frame,
        eh_frame_hdr_svma,
        eh_frame_hdr,
        debug_frame: s.debug_frame,
        ..ExplicitModuleSectionInfo::default()
    }
}

/// Unwinds the thread with `regs` through `memory`.
pub fn unwind(
    machine: Machine,
    regs: Regs,
    memory: &Memory,
    modules: &mut [UnwindModule<'_>],
    deadline: std::time::Instant,
) -> Stack {
    match machine {
        Machine::X86_64 => {
            let start = UnwindRegsX86_64::new(regs.pc, regs.sp, regs.fp);
            run(
                UnwinderX86_64::new(),
                CacheX86_64::new(),
                regs.pc,
                start,
                memory,
                modules,
                deadline,
            )
        }
        Machine::Aarch64 => {
            // Pointer authentication signs return addresses in their top bits: user space
            // addresses fit in 48 bits (52 with LVA, which user space must opt into).
            let mask = PtrAuthMask::from_max_known_address((1 << 48) - 1);
            let start = UnwindRegsAarch64::new_with_ptr_auth_mask(
                mask,
                regs.lr.unwrap_or(0),
                regs.sp,
                regs.fp,
            );
            run(
                UnwinderAarch64::new(),
                CacheAarch64::new(),
                mask.strip_ptr_auth(regs.pc),
                start,
                memory,
                modules,
                deadline,
            )
        }
        Machine::Other(_) => Stack {
            frames: vec![FrameAddress::from_instruction_pointer(regs.pc)],
            stopped: Some(format!("no unwinder for {}", machine.name())),
        },
    }
}

fn run<U>(
    mut unwinder: U,
    mut cache: U::Cache,
    pc: u64,
    regs: U::UnwindRegs,
    memory: &Memory,
    modules: &mut [UnwindModule<'_>],
    deadline: std::time::Instant,
) -> Stack
where
    U: Unwinder<Module = Module<Vec<u8>>>,
    U::UnwindRegs: Clone,
{
    let mut loaded = vec![false; modules.len()];
    let mut read_stack = |addr: u64| memory.u64_at(addr).ok_or(());
    loop {
        let mut frames = Vec::new();
        let mut stopped = None;
        let mut iter = unwinder.iter_frames(pc, regs.clone(), &mut cache, &mut read_stack);
        loop {
            if frames.len() >= MAX_FRAMES {
                stopped = Some(format!(
                    "more than {MAX_FRAMES} frames: the rest are not shown"
                ));
                break;
            }
            match iter.next() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    stopped = Some(format!("unwinding stopped: {e}"));
                    break;
                }
            }
        }
        // The first frame in a module whose unwind sections are not loaded yet: load them, and
        // unwind again (cheap, and exact: every frame before it stays the same).
        let next = frames.iter().find_map(|f| {
            let addr = f.address_for_lookup();
            modules
                .iter()
                .position(|m| m.range.contains(&addr))
                .filter(|&i| !loaded[i])
        });
        let Some(i) = next else {
            return Stack { frames, stopped };
        };
        if std::time::Instant::now() > deadline {
            return Stack {
                frames,
                stopped: Some("the time budget ran out while unwinding".into()),
            };
        }
        loaded[i] = true;
        let m = &mut modules[i];
        let info = m
            .sections
            .as_mut()
            .and_then(|read| read())
            .map(section_info)
            .unwrap_or_default();
        unwinder.add_module(Module::new(m.name.clone(), m.range.clone(), m.bias, info));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame-pointer chains unwind without any module file.
    #[test]
    fn frame_pointers_unwind_without_files() {
        let mut memory = Memory::default();
        // Stack at 0x1000: [saved rbp, return address] pairs, x86_64 layout.
        let stack: Vec<u64> = vec![
            0, 0, // locals below the first frame record
            0x1030, 0x40_1111, // frame record at 0x1010: next rbp, return address
            0, 0, // padding
            0x1050, 0x40_2222, // at 0x1030
            0, 0, 0, 0x40_3333, // at 0x1050: rbp 0 ends the chain
        ];
        let bytes = stack.iter().flat_map(|v| v.to_le_bytes()).collect();
        memory.insert(0x1000, bytes);
        let regs = Regs {
            pc: 0x40_0000,
            sp: 0x1000,
            fp: 0x1010,
            lr: None,
        };
        let far = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let stack = unwind(Machine::X86_64, regs, &memory, &mut [], far);
        let addrs: Vec<u64> = stack.frames.iter().map(|f| f.address()).collect();
        assert_eq!(addrs[..3], [0x40_0000, 0x40_1111, 0x40_2222], "{stack:?}");
        let other = unwind(Machine::Other(40), regs, &memory, &mut [], far);
        assert_eq!(other.frames.len(), 1);
        assert!(other.stopped.unwrap().contains("no unwinder"));
    }
}

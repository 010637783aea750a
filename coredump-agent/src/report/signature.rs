//! report::signature: what makes two crashes "the same crash", and the one-line summary people
//! read (`SIGSEGV in apply_discount ← parse_line ← main`).
//!
//! The signature is a stable hash of the top frames' module and function (the module and
//! offset where a frame has no symbol), after skipping the frames every crash of a kind shares:
//! the way down into `abort()` (`raise`, `pthread_kill`, `__assert_fail`…), and Rust's and
//! C++'s panic and terminate machinery. So every Rust panic is not one signature, and a
//! `strlen` on a bad pointer still names `strlen`. Two builds of a stripped binary get
//! different signatures (offsets move); with symbols they share one.

use sha2::{Digest as _, Sha256};

use super::Frame;

/// Frames that make up a signature and a summary.
pub const TOP: usize = 3;

/// Frames searched for crash machinery from the top.
const MACHINERY_DEPTH: usize = 32;

/// Functions that only carry a crash to `abort()` or the kernel: exact names.
const MACHINERY: &[&str] = &[
    "raise",
    "abort",
    "gsignal",
    "pthread_kill",
    "__pthread_kill_implementation",
    "__pthread_kill_internal",
    "__GI_raise",
    "__GI_abort",
    "__assert_fail",
    "__assert_fail_base",
    "__GI___assert_fail",
    "__assert_perror_fail",
    "__libc_message",
    "__libc_message_impl",
    "__libc_fatal",
    "__fortify_fail",
    "__chk_fail",
    "__stack_chk_fail",
    "malloc_printerr",
    "__restore_rt",
    "rust_panic",
    "__rust_start_panic",
    "rust_begin_unwind",
    "__rustc::rust_begin_unwind",
    "__rust_abort",
    "__cxa_throw",
    "__cxa_rethrow",
    "__cxa_call_terminate",
    "__cxa_call_unexpected",
];

/// Functions that only carry a crash there: name prefixes.
const MACHINERY_PREFIXES: &[&str] = &[
    "std::panicking::",
    "core::panicking::",
    "std::process::abort",
    "std::sys::pal::unix::abort_internal",
    "std::sys::abort_internal",
    "std::sys::backtrace::__rust_end_short_backtrace",
    "std::sys_common::backtrace::__rust_end_short_backtrace",
    // The standard library's own panic entry points (`__rustc::rust_panic`, …).
    "__rustc::",
    "panic_abort::",
    "core::option::unwrap_failed",
    "core::option::expect_failed",
    "core::result::unwrap_failed",
    "std::terminate",
    "std::__terminate",
    "__gnu_cxx::__verbose_terminate_handler",
    "__cxxabiv1::",
    "_Unwind_",
];

fn is_machinery(function: &str) -> bool {
    // `Result::unwrap`, `Option::expect`…, inlined into the caller: the caller is the crash.
    let unwrap = (function.starts_with("core::result::Result<")
        || function.starts_with("core::option::Option<"))
        && (function.ends_with("::unwrap") || function.ends_with("::expect"));
    unwrap
        || MACHINERY.contains(&function)
        || MACHINERY_PREFIXES.iter().any(|p| function.starts_with(p))
}

/// Whether a frame is in the C library (its unnamed internals sit between `abort` and the
/// kernel).
fn in_libc(frame: &Frame) -> bool {
    frame.module.as_deref().is_some_and(|m| {
        m.starts_with("libc.so")
            || m.starts_with("libc-")
            || m.starts_with("libpthread")
            || m.starts_with("ld-musl")
    })
}

/// The frames that say where the crash is: past the crash machinery at the top (with the
/// unnamed C library frames among it: a stripped libc's internals), when there is any.
/// Machinery further down (`catch_unwind` around a thread's work) is the crash's own stack.
pub fn significant(frames: &[Frame]) -> &[Frame] {
    let machinery = |f: &Frame| f.function.as_deref().is_some_and(is_machinery);
    let prefix = frames
        .iter()
        .take(MACHINERY_DEPTH)
        .take_while(|f| machinery(f) || (f.function.is_none() && in_libc(f)))
        .count();
    // Only unnamed libc frames: a fault in libc itself, which is where the crash is.
    let skip = frames[..prefix]
        .iter()
        .rposition(machinery)
        .map_or(0, |last| last + 1);
    if skip < frames.len() {
        &frames[skip..]
    } else {
        // Nothing but machinery: the frames as they are.
        frames
    }
}

/// A frame as the signature and summary name it: its function, else `module+0xoffset`.
pub fn frame_name(frame: &Frame) -> String {
    match (&frame.function, &frame.module, frame.offset) {
        (Some(f), _, _) => f.clone(),
        (None, Some(m), Some(off)) => format!("{m}+{:#x}", off.0),
        (None, Some(m), None) => m.clone(),
        (None, None, _) => format!("{:#x}", frame.addr.0),
    }
}

/// The signature: 16 hex digits of SHA-256 over the top significant frames' module and name.
/// `None` without frames, or when no top frame is in a known module (addresses alone say
/// nothing stable).
pub fn signature(frames: &[Frame]) -> Option<String> {
    let top: Vec<&Frame> = significant(frames).iter().take(TOP).collect();
    if top.is_empty() || top.iter().all(|f| f.module.is_none()) {
        return None;
    }
    let mut h = Sha256::new();
    for f in top {
        let module = f.module.as_deref().unwrap_or("?");
        let what = match (&f.function, f.offset) {
            (Some(func), _) => func.clone(),
            (None, Some(off)) => format!("+{:#x}", off.0),
            (None, None) => "?".into(),
        };
        h.update(module.as_bytes());
        h.update(b"!");
        h.update(what.as_bytes());
        h.update(b"\n");
    }
    Some(crate::store::hex(&h.finalize()[..8]))
}

/// `SIGSEGV in f ← g ← main`, or `SIGSEGV at 0x…` without frames.
pub fn summary(signal: &str, frames: &[Frame]) -> String {
    let names: Vec<String> = significant(frames)
        .iter()
        .take(TOP)
        .map(frame_name)
        .collect();
    if names.is_empty() {
        signal.to_owned()
    } else {
        format!("{signal} in {}", names.join(" ← "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Addr;

    fn f(module: &str, function: Option<&str>, offset: u64) -> Frame {
        Frame {
            addr: Addr(0x1000 + offset),
            module: Some(module.into()),
            offset: Some(Addr(offset)),
            function: function.map(str::to_owned),
            ..Frame::default()
        }
    }

    #[test]
    fn abort_machinery_is_skipped() {
        let frames = [
            f("libc.so.6", None, 0x8eebc),
            f("libc.so.6", Some("raise"), 0x3c050),
            f("libc.so.6", Some("abort"), 0x26472),
            f("app", Some("std::sys::pal::unix::abort_internal"), 0x10),
            f("app", Some("std::process::abort"), 0x20),
            f("app", Some("panic_abort::__rust_start_panic::abort"), 0x30),
            f("app", Some("__rustc::__rust_start_panic"), 0x40),
            f("app", Some("__rustc::rust_panic"), 0x50),
            f("app", Some("std::panicking::rust_panic_with_hook"), 0x60),
            f(
                "app",
                Some("std::panicking::begin_panic_handler::{{closure}}"),
                0x70,
            ),
            f(
                "app",
                Some("std::sys::backtrace::__rust_end_short_backtrace"),
                0x80,
            ),
            f("app", Some("__rustc::rust_begin_unwind"), 0x90),
            f("app", Some("core::panicking::panic_fmt"), 0xa0),
            f("app", Some("app::apply_discount"), 0xb0),
            f("app", Some("app::parse_line"), 0xc0),
            f("app", Some("app::main"), 0xd0),
            f("app", Some("std::rt::lang_start::{{closure}}"), 0xe0),
        ];
        assert_eq!(
            summary("SIGABRT", &frames),
            "SIGABRT in app::apply_discount ← app::parse_line ← app::main"
        );
        // A C assert through a stripped libc.
        let c = [
            f("libc.so.6", None, 0x8eebc),
            f("libc.so.6", None, 0x3c050),
            f("libc.so.6", Some("abort"), 0x26472),
            f("libc.so.6", None, 0x2639a),
            f("libc.so.6", Some("__assert_fail"), 0x35132),
            f("prog", Some("check"), 0x1189),
            f("prog", Some("main"), 0x11a9),
        ];
        assert_eq!(summary("SIGABRT", &c), "SIGABRT in check ← main");
        // A panic in a thread: catch_unwind below the crash's frames is not machinery.
        let mut t = frames[..14].to_vec();
        t.push(f(
            "app",
            Some("std::panicking::catch_unwind::do_call"),
            0x100,
        ));
        t.push(f("app", Some("std::panicking::catch_unwind"), 0x110));
        assert_eq!(
            summary("SIGABRT", &t),
            "SIGABRT in app::apply_discount ← std::panicking::catch_unwind::do_call ← std::panicking::catch_unwind"
        );
    }

    #[test]
    fn a_fault_in_libc_keeps_its_frame() {
        let frames = [
            f("libc.so.6", Some("__strlen_avx2"), 0x1a0f5d),
            f("prog", None, 0x1149),
            f("prog", None, 0x1160),
        ];
        assert_eq!(
            summary("SIGSEGV", &frames),
            "SIGSEGV in __strlen_avx2 ← prog+0x1149 ← prog+0x1160"
        );
    }

    #[test]
    fn signatures_follow_the_top_frames_only() {
        let a = [
            f("prog", Some("crash3"), 0x10),
            f("prog", Some("crash2"), 0x20),
            f("prog", Some("crash1"), 0x30),
            f("prog", Some("main"), 0x40),
        ];
        // The same place, reached from elsewhere below the top three, at other offsets.
        let mut b = a.clone();
        b[3] = f("prog", Some("other_main"), 0x99);
        b[0].offset = Some(Addr(0x11));
        let mut c = a.clone();
        c[0] = f("prog", Some("crash4"), 0x10);
        let sig = signature(&a).unwrap();
        assert_eq!(sig.len(), 16);
        assert_eq!(signature(&b), Some(sig.clone()));
        assert_ne!(signature(&c), Some(sig.clone()));
        // Without symbols the offsets are what is known: they count.
        let s1 = [f("prog", None, 0x10), f("prog", None, 0x20)];
        let s2 = [f("prog", None, 0x14), f("prog", None, 0x20)];
        assert_ne!(signature(&s1), signature(&s2));
        assert_eq!(signature(&[]), None);
        let unknown = Frame {
            addr: Addr(0xdead),
            ..Frame::default()
        };
        assert_eq!(signature(&[unknown]), None);
        assert_eq!(summary("SIGSEGV", &[]), "SIGSEGV");
    }
}

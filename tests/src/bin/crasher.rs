//! `crasher MODE [ARG] [-- IGNORED...]`: a small program the end-to-end tests crash in controlled ways.
//!
//! Protocol: it prints `ready <host_pid> <ns_pid> <host_tid>` (the ids of the task that will
//! receive the signal), then waits for a line on stdin before acting, so a test can set
//! things up (cgroup, probe) first and never races fork/exec.
//!
//! Modes: segv, deep (segfaults in crash_three ← crash_two ← crash_one), abort, quit, handled (SIGSEGV with a handler), term, ignored (SIGQUIT set to
//! SIG_IGN then sent), thread NAME (a named thread segfaults), pidns MODE (MODE runs as pid 2
//! of a new pid namespace), signal-loop N (benchmark: prints ns per handled SIGUSR1), sleep,
//! hostname NAME (segfaults in a new UTS namespace whose hostname is NAME, so a core_pattern's
//! `%h` says NAME: a container can claim any hostname, e.g. another pod's name),
//! drop-privileges UID (switches from root to UID, default 65534, then segfaults),
//! unreadable-args (segfaults after making the pages of its argument area inaccessible),
//! half-readable-args [PAD] (the same, but the area's first 8 bytes stay readable: it first
//! re-executes itself with a padding argument that puts them at the end of a page),
//! mountns MODE (MODE in a new mount namespace where /tmp, /run and /var/lib are empty: a
//! container that mounts nothing), big MIB (segfaults holding MIB MiB of written memory),
//! flood N[:PER_SEC] (N forked children segfault, at once or paced; prints how many did).
//! Arguments after `--` are ignored: tests use them to give it a recognisable command line.
//!
//! `CRASHER_CORE_LIMIT` sets RLIMIT_CORE (default 0: the probe tests need no core file).
//! `CRASHER_COMM` renames the process first (prctl PR_SET_NAME).
#![allow(unsafe_code, reason = "a test helper that crashes on purpose")]

use std::{
    ffi::CString,
    io::{BufRead as _, Write as _},
    time::Instant,
};

fn ids() -> (u32, u32) {
    // NSpid lists the pid from the outermost to the innermost namespace; /proc is the host's.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let host = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (host, std::process::id())
}

fn ready_and_wait(tid: u32) {
    let (host, ns) = ids();
    println!("ready {host} {ns} {tid}");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
}

fn host_tid() -> u32 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn segv() -> ! {
    // SAFETY: not sound, on purpose: a NULL write delivers SIGSEGV with SEGV_MAPERR.
    unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
    unreachable!()
}

// `deep`: a segfault three calls down, for the crash report's backtrace. Not inlined, so each
// is a frame of its own whatever the profile.
#[inline(never)]
fn crash_three(depth: u32) {
    std::hint::black_box(depth);
    segv();
}

#[inline(never)]
fn crash_two(depth: u32) {
    crash_three(std::hint::black_box(depth + 1));
    std::hint::black_box(());
}

#[inline(never)]
fn crash_one(depth: u32) {
    crash_two(std::hint::black_box(depth + 1));
    std::hint::black_box(());
}

fn raise(sig: libc::c_int) {
    // SAFETY: raise has no memory-safety preconditions.
    unsafe { libc::raise(sig) };
}

extern "C" fn exit_handler(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

static mut HANDLED: u64 = 0;
extern "C" fn count_handler(_: libc::c_int) {
    // SAFETY: single-threaded program; the handler runs synchronously inside raise().
    unsafe { HANDLED += 1 };
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: installs a plain handler (or SIG_IGN); `sa` is fully initialised.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

fn act(mode: &str, arg: Option<&str>) {
    match mode {
        "segv" => {
            ready_and_wait(host_tid());
            segv();
        }
        "abort" => {
            ready_and_wait(host_tid());
            // SAFETY: abort has no preconditions.
            unsafe { libc::abort() };
        }
        "quit" => {
            ready_and_wait(host_tid());
            raise(libc::SIGQUIT);
        }
        "term" => {
            ready_and_wait(host_tid());
            raise(libc::SIGTERM);
        }
        "handled" => {
            set_handler(
                libc::SIGSEGV,
                exit_handler as *const () as libc::sighandler_t,
            );
            ready_and_wait(host_tid());
            segv();
        }
        "ignored" => {
            set_handler(libc::SIGQUIT, libc::SIG_IGN);
            ready_and_wait(host_tid());
            raise(libc::SIGQUIT);
            std::process::exit(0);
        }
        "thread" => {
            let name = arg.unwrap_or("bad-worker").to_owned();
            let (tx, rx) = std::sync::mpsc::channel();
            let worker = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    tx.send(host_tid()).unwrap();
                    std::thread::park();
                    segv();
                })
                .unwrap();
            let tid = rx.recv().unwrap();
            ready_and_wait(tid);
            worker.thread().unpark();
            worker.join().ok();
        }
        "pidns" => pidns(arg.unwrap_or("segv")),
        "deep" => {
            ready_and_wait(host_tid());
            crash_one(std::hint::black_box(0));
        }
        "signal-loop" => {
            let n: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
            set_handler(
                libc::SIGUSR1,
                count_handler as *const () as libc::sighandler_t,
            );
            let start = Instant::now();
            for _ in 0..n {
                raise(libc::SIGUSR1);
            }
            let ns = start.elapsed().as_nanos() as f64 / n as f64;
            // SAFETY: read after all handlers ran; single-threaded.
            assert_eq!(unsafe { HANDLED }, n);
            println!("{ns:.1}");
        }
        "drop-privileges" => {
            let uid: libc::uid_t = arg.and_then(|a| a.parse().ok()).unwrap_or(65534);
            drop_privileges(uid);
            ready_and_wait(host_tid());
            segv();
        }
        "hostname" => {
            set_hostname(arg.unwrap_or("impostor"));
            ready_and_wait(host_tid());
            segv();
        }
        "unreadable-args" => {
            ready_and_wait(host_tid());
            unreadable_args();
            segv();
        }
        "half-readable-args" => {
            align_args();
            ready_and_wait(host_tid());
            half_readable_args();
            segv();
        }
        "sleep" => {
            ready_and_wait(host_tid());
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        "flood" => {
            // `flood N [PER_SEC]`: N children segfault at once, or paced at PER_SEC.
            let mut parts = arg.unwrap_or("100").split(':');
            let n: u32 = parts.next().and_then(|a| a.parse().ok()).unwrap_or(100);
            let per_sec: u32 = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
            ready_and_wait(host_tid());
            flood(n, per_sec);
        }
        "mountns" => {
            hide_host_dirs();
            act(arg.unwrap_or("segv"), None);
        }
        "big" => {
            let mib: usize = arg.and_then(|a| a.parse().ok()).unwrap_or(1024);
            let memory = fill(mib << 20);
            ready_and_wait(host_tid());
            std::hint::black_box(&memory);
            segv();
        }
        other => {
            eprintln!("crasher: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

/// Switches to `uid` (group too), as a daemon that starts as root and drops privileges does.
/// The kernel then marks the process not dumpable unless `fs.suid_dumpable` says otherwise.
fn drop_privileges(uid: libc::uid_t) {
    // SAFETY: setgid/setuid take plain integers; the group goes first, while still root.
    if unsafe { libc::setgid(uid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
        eprintln!(
            "crasher: setuid({uid}): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(3);
    }
}

const PAGE: usize = 4096;

/// `mm->arg_start` and `mm->arg_end` of this process (`/proc/self/stat` fields 48 and 49).
fn arg_area() -> (usize, usize) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the comm, which is in parentheses and may hold spaces, start at field 3.
    let fields: Vec<usize> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    (fields[48 - 3], fields[49 - 3])
}

/// Makes the pages `[from, to)` of this process inaccessible, as pages that are not resident
/// are to a reader that cannot fault them in (the probe).
fn protect(from: usize, to: usize) {
    let from = from & !(PAGE - 1);
    let to = to.div_ceil(PAGE) * PAGE;
    // SAFETY: not sound if the range holds live stack frames, on purpose: the crasher is
    // about to crash anyway, and a fault there is a SIGSEGV as well.
    let rc = unsafe { libc::mprotect(from as *mut libc::c_void, to - from, libc::PROT_NONE) };
    assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
}

/// Makes its whole argument area unreadable.
fn unreadable_args() {
    let (start, end) = arg_area();
    protect(start, end);
}

/// How many bytes of the argument area stay readable in `half-readable-args`.
const HALF_READABLE: usize = 8;

/// Re-executes itself, padding its command line, until the argument area starts
/// [`HALF_READABLE`] bytes before the end of a page. (The strings sit at the top of the
/// stack, whose position is random in whole pages, so their offset in a page depends only on
/// the sizes of the strings: file name, environment, arguments.) Needs no privilege, unlike
/// moving the area with `prctl(PR_SET_MM)`.
fn align_args() {
    const TRIES: &str = "CRASHER_ALIGN_TRIES";
    let (start, _) = arg_area();
    if PAGE - start % PAGE == HALF_READABLE {
        return;
    }
    // The first re-exec changes the file name (to the resolved one) and adds this variable;
    // from then on only the padding changes size, so the second one is aligned.
    let tries: u32 = std::env::var(TRIES)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if tries >= 5 {
        eprintln!("crasher: could not align the argument area");
        std::process::exit(3);
    }
    // SAFETY: single-threaded; the variable is only read by the exec'd image.
    unsafe { std::env::set_var(TRIES, (tries + 1).to_string()) };
    let mut args: Vec<String> = std::env::args().take(3).collect();
    // Grow the arguments by `delta` bytes (mod a page), so the area starts that much lower.
    let delta = (start % PAGE + HALF_READABLE) % PAGE;
    let pad = args.get(2).map_or(0, |p| p.len() + 1);
    let total = match (pad + delta) % PAGE {
        0 => PAGE,
        n => n,
    };
    args.truncate(2);
    args.push("p".repeat(total - 1));
    let exe = CString::new(std::env::current_exe().unwrap().to_str().unwrap()).unwrap();
    let args: Vec<CString> = args.into_iter().map(|a| CString::new(a).unwrap()).collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: valid NUL-terminated strings and array; execv only returns on error.
    unsafe { libc::execv(exe.as_ptr(), argv.as_ptr()) };
    eprintln!("crasher: execv: {}", std::io::Error::last_os_error());
    std::process::exit(3);
}

/// Makes all but the first [`HALF_READABLE`] bytes of the argument area unreadable.
fn half_readable_args() {
    let (start, end) = arg_area();
    protect(start + HALF_READABLE, end);
}

/// Moves this process into a new UTS namespace with hostname `name`, as a container runtime
/// does for a pod (whose hostname the pod spec, or the process itself, chooses).
fn set_hostname(name: &str) {
    // SAFETY: unshare(CLONE_NEWUTS) only changes this process's own namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWUTS) } != 0 {
        eprintln!(
            "crasher: unshare(CLONE_NEWUTS): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(3);
    }
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        eprintln!("crasher: sethostname: {}", std::io::Error::last_os_error());
        std::process::exit(3);
    }
}

/// Moves this process into a new mount namespace in which `/tmp`, `/run` and `/var/lib` are
/// empty: as in a container that mounts nothing of the host, no dump directory, receive
/// directory or socket of the agent (all under those) can be seen from here.
fn hide_host_dirs() {
    // SAFETY: unshare(CLONE_NEWNS) only changes this process's own namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        eprintln!(
            "crasher: unshare(CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(3);
    }
    let root = CString::new("/").unwrap();
    let tmpfs = CString::new("tmpfs").unwrap();
    // SAFETY: valid NUL-terminated strings; no data argument. Private first, so nothing
    // mounted here propagates back to the host.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "mount --make-rprivate /: {}",
        std::io::Error::last_os_error()
    );
    for dir in ["/tmp", "/run", "/var/lib"] {
        let target = CString::new(dir).unwrap();
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                tmpfs.as_ptr(),
                target.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount tmpfs {dir}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Forks `n` children that segfault at once (paced at `per_sec` a second unless 0), reaps them,
/// and prints how many died of SIGSEGV.
fn flood(n: u32, per_sec: u32) {
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..n {
        if per_sec > 0 {
            let due = std::time::Duration::from_secs_f64(f64::from(i) / f64::from(per_sec));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        // SAFETY: single-threaded; the child only segfaults.
        match unsafe { libc::fork() } {
            0 => segv(),
            -1 => break,
            pid => children.push(pid),
        }
    }
    let crashed = children
        .into_iter()
        .filter(|&pid| wait_status(pid) == 128 + libc::SIGSEGV)
        .count();
    // Nobody may be reading any more.
    let _ = writeln!(std::io::stdout(), "{crashed}");
}

/// `len` bytes of memory written with a cheap pseudo-random sequence: a core that compresses
/// about as well as real heap does, not to nothing.
fn fill(len: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len / 8)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half the words small numbers, as real memory holds many.
            if i % 2 == 0 { x } else { x & 0xff }
        })
        .collect()
}

/// Runs `mode` as pid 2 of a new pid namespace (pid 1 is a waiting init), and exits with
/// the child's status.
fn pidns(mode: &str) {
    // SAFETY: unshare(CLONE_NEWPID) only affects children created afterwards.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        eprintln!(
            "crasher: unshare(CLONE_NEWPID): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(3);
    }
    // SAFETY: single-threaded here; the child only calls async-signal-safe code or execs.
    match unsafe { libc::fork() } {
        0 => {
            // pid 1 of the new namespace: fork the real test process (pid 2), reap it.
            // SAFETY: as above.
            let child = unsafe { libc::fork() };
            if child == 0 {
                // The real path, not /proc/self/exe: the comm comes from the exec'd name.
                let path = std::env::current_exe().unwrap();
                let exe = CString::new(path.to_str().unwrap()).unwrap();
                let a0 = CString::new("crasher").unwrap();
                let a1 = CString::new(mode).unwrap();
                let argv = [a0.as_ptr(), a1.as_ptr(), std::ptr::null()];
                // SAFETY: valid NUL-terminated argv; execv only returns on error.
                unsafe { libc::execv(exe.as_ptr(), argv.as_ptr()) };
                // SAFETY: _exit after a failed exec in a forked child.
                unsafe { libc::_exit(4) };
            }
            std::process::exit(wait_status(child));
        }
        -1 => std::process::exit(3),
        init => std::process::exit(wait_status(init)),
    }
}

/// Waits for a child; returns 128+signal if it was killed, like a shell.
fn wait_status(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is writable for the call.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

fn main() {
    let limit: u64 = std::env::var("CRASHER_CORE_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `rlim` is valid for the call. Raising the hard limit fails without privilege;
    // then fall back to the soft limit only.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &rlim) } != 0 {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        unsafe {
            libc::getrlimit(libc::RLIMIT_CORE, &mut cur);
            cur.rlim_cur = limit.min(cur.rlim_max);
            libc::setrlimit(libc::RLIMIT_CORE, &cur);
        }
    }
    if let Ok(comm) = std::env::var("CRASHER_COMM") {
        let comm = CString::new(comm).unwrap();
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    }
    let mut args = std::env::args().skip(1).take_while(|a| a != "--");
    let mode = args.next().unwrap_or_default();
    let arg = args.next();
    act(&mode, arg.as_deref());
}

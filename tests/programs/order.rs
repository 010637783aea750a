//! A Rust program the crash report tests crash: built with `-C panic=abort`, so its panic ends
//! in libc's abort() (SIGABRT), three calls deep (apply_discount ← parse_line ← main).
//!
//! Protocol of the tests' crasher: prints `ready <host pid> <ns pid> <host tid>`, then waits
//! for a line on stdin before panicking.

use std::io::{BufRead as _, Write as _};

fn host_pid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

#[inline(never)]
fn apply_discount(price: Option<u32>) -> u32 {
    price.expect("an order line has a price") * 9 / 10
}

#[inline(never)]
fn parse_line(line: &str) -> u32 {
    apply_discount(line.split(',').nth(1).and_then(|p| p.trim().parse().ok()))
}

fn main() {
    let pid = host_pid();
    println!("ready {pid} {} {pid}", std::process::id());
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).unwrap();
    println!("{}", parse_line("widget, twelve"));
}

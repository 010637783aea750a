//! The kernel side of coredump-agent: see `probes/signal_deliver.rs`.
#![no_std]
#![no_main]

mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach this, so it is never entered.
    loop {}
}

/// GPL-compatible: `bpf_probe_read_kernel` and `bpf_get_current_task` are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

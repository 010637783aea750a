use which::which;

/// Rebuild when bpf-linker changes: it is the linker of the eBPF object, but cargo does not know.
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found: run `cargo xtask setup` (installs LLVM 22 and bpf-linker)");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}

//! The coredump-agent command line, built inside the test package so the end-to-end tests
//! always run the current code.
fn main() -> std::process::ExitCode {
    coredump_agent::cli::main()
}

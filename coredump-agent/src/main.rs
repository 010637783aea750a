use std::process::ExitCode;

fn main() -> ExitCode {
    coredump_agent::cli::main()
}

//! `flea`: the command line (see `src/cli/`). Parses arguments, calls the
//! library, and maps errors to the exit codes documented in the README.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

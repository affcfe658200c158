//! The `tee-risk` command: everything it does is in the library's `cli` module.

fn main() -> std::process::ExitCode {
    tee_risk::cli::main()
}

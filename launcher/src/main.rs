#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    launcher::cli::main()
}

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eventsvc::cli::main()
}

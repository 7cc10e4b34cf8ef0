#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    bench::cli::main()
}

fn main() -> std::process::ExitCode {
    bench::main()
}

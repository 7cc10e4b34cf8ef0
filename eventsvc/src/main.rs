fn main() -> std::process::ExitCode {
    eventsvc::main()
}

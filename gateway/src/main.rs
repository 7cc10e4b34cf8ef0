fn main() -> std::process::ExitCode {
    gateway::main()
}

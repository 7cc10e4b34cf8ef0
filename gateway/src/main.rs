#[global_allocator]
static ALLOCATOR: eventsys::process::Allocator = eventsys::process::Allocator;

fn main() -> std::process::ExitCode {
    gateway::main()
}

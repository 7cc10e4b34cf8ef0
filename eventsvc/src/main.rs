#[global_allocator]
static ALLOCATOR: eventsys::process::Allocator = eventsys::process::Allocator;

fn main() -> std::process::ExitCode {
    eventsvc::main()
}

//! The `headlamp` binary: stage 07 on the shared stage CLI (`headlamp --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(headlamp::Headlamp)
}

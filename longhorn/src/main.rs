//! The `longhorn` binary: stage 06 on the shared stage CLI (`longhorn --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(longhorn::Longhorn)
}

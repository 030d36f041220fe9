//! The `metallb` binary: stage 02 on the shared stage CLI (`metallb --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(metallb::Metallb)
}

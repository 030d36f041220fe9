//! The `talos-bootstrap` binary: stage 01 on the shared stage CLI (`talos-bootstrap --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(talos_bootstrap::TalosBootstrap)
}

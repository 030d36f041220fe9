//! The `workloads` binary: stage 100 on the shared stage CLI (`workloads --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(workloads::Workloads)
}

//! The `metrics-server` binary: stage 03 on the shared stage CLI (`metrics-server --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(metrics_server::MetricsServer)
}

//! The `envoy-gateway` binary: stage 08 on the shared stage CLI (`envoy-gateway --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(envoy_gateway::EnvoyGateway)
}

//! The `cert-manager` binary: stage 05 on the shared stage CLI (`cert-manager --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(cert_manager::CertManager)
}

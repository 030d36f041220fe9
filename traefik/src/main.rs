//! The `traefik` binary: stage 04 on the shared stage CLI (`traefik --help`).

fn main() -> std::process::ExitCode {
    kit::stage::main(traefik::Traefik)
}

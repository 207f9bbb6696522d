//! `msctl`: the msfleet command line.

use clap::Parser;

#[tokio::main]
async fn main() {
    // A closed stdout ends msctl quietly through `msctl::out!` (exit 141).
    let cli = msctl::cli::Cli::parse();
    let telemetry =
        match msfleet_proto::telemetry::init("msctl", cli.otlp_endpoint.as_deref(), false) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("msctl: {e}");
                std::process::exit(msctl::exit::BAD_INPUT);
            }
        };
    let code = match msctl::commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msctl: {e}");
            e.code
        }
    };
    // msctl is short-lived: its spans are exported before it exits.
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
    std::process::exit(code);
}

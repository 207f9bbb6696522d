//! `msctl`: the msfleet command line.

use clap::Parser;

#[tokio::main]
async fn main() {
    // A closed stdout ends msctl quietly through `msctl::out!` (exit 141).
    let cli = msctl::cli::Cli::parse();
    let code = match msctl::commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msctl: {e}");
            e.code
        }
    };
    std::process::exit(code);
}

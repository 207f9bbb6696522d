//! `msctl`: the msfleet command line.

use clap::Parser;

#[tokio::main]
async fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`msctl list | head -1`): the default SIGPIPE action (exit 141)
    // instead of Rust's ignored SIGPIPE and a panic in println!.
    // SAFETY: resetting a signal disposition to its default at start, before
    // any other thread could depend on it, has no memory-safety effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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

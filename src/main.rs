#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cas_bridge::app::Cli::parse();
    match cas_bridge::app::main(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cas-bridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

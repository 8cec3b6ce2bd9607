#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc returns freed memory to the system far better than glibc's
/// per-thread arenas, which kept the resident size near its backfill peak.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cas_bridge::app::Cli::parse();
    match cas_bridge::app::main(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `run`'s fatal error is in the log already, in its format.
        Err(e) if e.is::<cas_bridge::app::Reported>() => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cas-bridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

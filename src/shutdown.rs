//! The one shutdown path's start: SIGTERM and SIGINT cancel a token that
//! every command (the bridge, replay, redrive) stops on.

use tokio_util::sync::CancellationToken;

/// Cancels the token on SIGINT or SIGTERM. The handlers are installed
/// before this returns, so a signal that arrives right after is not lost
/// (the default action would kill the process without a graceful stop).
pub fn cancel_on_signals(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
            tracing::info!("signal received");
            cancel.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received");
        cancel.cancel();
    });
}

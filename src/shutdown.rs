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

/// Once `cancel` fires, ends the process after `bound` if it has not ended
/// by itself: a thread of its own does it, so nothing the runtime waits on
/// (a broker client that never connected, a blocking call) can hold the
/// exit longer. The exit code is 0: what was not delivered was not
/// checkpointed, so the next holder reads it again.
pub fn exit_after(cancel: CancellationToken, bound: std::time::Duration) {
    tokio::spawn(async move {
        cancel.cancelled().await;
        std::thread::spawn(move || {
            std::thread::sleep(bound);
            tracing::warn!(
                bound_s = crate::field::secs(bound),
                "shutdown did not finish within the grace and its margin; exiting now (nothing undelivered was checkpointed)"
            );
            std::process::exit(0);
        });
    });
}

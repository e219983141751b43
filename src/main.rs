//! The rsproxyd binary: parse, take the sockets, run the server, map the result to an exit code.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rsproxyd::cli::{self, Parsed};
use rsproxyd::server::{self, Outcome, Stop};
use rsproxyd::{activation, logging, notify::Notifier};

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args_os()) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::FAILURE;
        }
    };
    // The environment is read and cleaned while this is the only thread.
    let sockets = activation::take_from_env();
    let notifier = Notifier::from_env();
    logging::init();
    let sockets = match sockets {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = notifier.unwrap_or_else(|e| {
        tracing::warn!("NOTIFY_SOCKET is unusable ({e}); not notifying systemd");
        Notifier::disabled()
    });
    raise_fd_limit();
    let mut builder = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.threads);
        b
    };
    let runtime = match builder.enable_all().thread_name("rsproxyd").build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the event loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Stop::new();
    let forced = Arc::new(AtomicBool::new(false));
    let result = runtime.block_on(async {
        tokio::spawn(handle_signals(stop.clone(), forced.clone()));
        server::run(config, sockets, notifier, stop).await
    });
    runtime.shutdown_background();
    match result {
        // A second signal cut the drain short: not a clean stop.
        Ok(_) if forced.load(Ordering::Relaxed) => ExitCode::FAILURE,
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// First SIGTERM/SIGINT: stop accepting and drain. Second: reset what is open and exit 1.
async fn handle_signals(stop: Stop, forced: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!(
            "cannot install signal handlers; SIGTERM will end rsproxyd without draining"
        );
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        seen += 1;
        if seen == 1 {
            tracing::debug!("signal received: no longer accepting, draining connections");
            stop.request(Outcome::Stopped);
        } else {
            tracing::warn!("second signal: resetting open connections and exiting");
            forced.store(true, Ordering::Relaxed);
            stop.cut_now();
        }
    }
}

/// Raises the soft open-file limit to the hard one: each relay needs two sockets and, for
/// bulk traffic, two pipes per direction.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
    }
}

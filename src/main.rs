//! The `confer` binary: parses the command line and hands over to [`confer::app`].

use clap::Parser;
use confer::app::cli::{Cli, Command};
use confer::app::{self, Server};
use confer::config::LogConfig;
use std::process::ExitCode;

fn init_logging(cfg: &LogConfig, json: bool) {
    use tracing_subscriber::EnvFilter;
    // webrtc-rs warns about routine events (a packet before DTLS is up, an
    // unknown TLS extension); unless the filter names it, show only its errors.
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.level.clone());
    let quiet = if wanted.contains("rtc") { String::new() } else { ",rtc=error,rtc_dtls=error,rtc_ice=error".into() };
    let filter = EnvFilter::try_new(format!("{wanted}{quiet}")).unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json || cfg.json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::Loadtest(args) => loadtest(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raise the open-file limit as far as allowed: every WebSocket, TURN
/// allocation and TCP client is a descriptor, and the usual soft limit (1024)
/// would cap a server at about a thousand clients. A privileged process may also
/// lift the hard limit (up to `fs.nr_open`); others get the soft limit raised to
/// the hard one.
fn raise_fd_limit() {
    #[cfg(unix)]
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let before = lim.rlim_cur;
        let want: libc::rlim_t = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(lim.rlim_max)
            .min(1 << 20);
        let wider = libc::rlimit { rlim_cur: want.max(lim.rlim_max), rlim_max: want.max(lim.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wider) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        tracing::debug!(from = before, to = lim.rlim_cur, "open-file limit");
    }
}

fn serve(args: confer::app::cli::ServeArgs) -> anyhow::Result<()> {
    let (config, env_warning) = args.common.load(args.http, args.dev, args.lan)?;
    init_logging(&config.log, args.log_json);
    if let Some(w) = env_warning {
        tracing::warn!("{w}");
    }
    raise_fd_limit();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (dev, lan) = (args.dev, args.lan);
        let server = Server::bind(config).await?;
        // The one line tests and operators look for (SPEC 1), on stdout.
        println!("{}", server.listening_line());
        tracing::info!("{}", server.listening_line());
        if lan {
            // On stdout after the listening line, for a person (and tests) to read.
            let urls = server.urls();
            println!("open {} on a phone or laptop on the same network (accept the self-signed certificate)", urls[0]);
            for u in &urls[1..] {
                println!("  also {u}");
            }
        }
        if dev {
            tracing::info!("dev mode: guest tokens on; open {}", server.url());
        } else {
            tracing::info!("web client at {}", server.url());
        }
        server.run(app::shutdown_signal()).await
    })
}

fn loadtest(args: confer::app::cli::LoadtestArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let config = load_quietly(&args.common)?;
    let keys = app::token_keys(&config)?;
    let opts = confer::loadtest::LoadOpts {
        url: args.url.first().map(|u| u.trim_end_matches('/').to_owned()).unwrap_or_default(),
        urls: args.url.iter().map(|u| u.trim_end_matches('/').to_owned()).collect(),
        rooms: args.rooms.max(1),
        publishers: args.publishers.max(1),
        subscribers: args.subscribers,
        seconds: args.seconds.max(1),
        video_kbps: args.video_kbps.max(10),
        fps: args.fps.clamp(1, 50),
        pacing: if args.pacing.is_finite() { args.pacing.clamp(0.0, 100.0) } else { 0.0 },
        audio: !args.no_audio,
        meeting: args.meeting,
        janus: args.janus.clone(),
        server_pid: args.server_pid,
        simulcast: args.simulcast,
        sim_group: args.sim_group,
        ceilings: args.ceilings.clone(),
        cap_kbps: args.cap_kbps.map(|k| k.max(50)),
        switch: args.switch,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(confer::loadtest::run(opts, &keys))?;
    println!("{report}");
    Ok(())
}

/// The config for a command that does not log: the ignored-variables
/// warning goes to stderr, away from what it prints.
fn load_quietly(args: &confer::app::cli::ConfigArgs) -> anyhow::Result<confer::config::Config> {
    let (config, env_warning) = args.load(None, false, false)?;
    if let Some(w) = env_warning {
        eprintln!("confer: warning: {w}");
    }
    Ok(config)
}

fn token(args: confer::app::cli::TokenArgs) -> anyhow::Result<()> {
    let config = load_quietly(&args.common)?;
    let claims = args.claims()?;
    println!("{}", app::mint_token(&config, &claims)?);
    Ok(())
}

//! The `confer` binary: parses the command line and hands over to [`confer::app`].

use clap::Parser;
use confer::app::cli::{Cli, Command};
use confer::app::{self, Server};
use confer::config::LogConfig;
use std::process::ExitCode;

fn init_logging(cfg: &LogConfig, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: confer::app::cli::ServeArgs) -> anyhow::Result<()> {
    let config = args.common.load(args.http, args.dev)?;
    init_logging(&config.log, args.log_json);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let dev = args.dev;
        let server = Server::bind(config).await?;
        // The one line tests and operators look for (SPEC 1), on stdout.
        println!("{}", server.listening_line());
        tracing::info!("{}", server.listening_line());
        if dev {
            tracing::info!("dev mode: guest tokens on; open http://{}/", server.http_addr());
        }
        server.run(app::shutdown_signal()).await
    })
}

fn token(args: confer::app::cli::TokenArgs) -> anyhow::Result<()> {
    let config = args.common.load(None, false)?;
    let claims = args.claims()?;
    println!("{}", app::mint_token(&config, &claims)?);
    Ok(())
}

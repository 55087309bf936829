//! `larder`: the command-line tool of the Larder feature store.

mod apply;
mod context;
mod demo;
mod get;
mod materialize;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Larder: define features as code, materialize them, serve them in milliseconds.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about)]
struct Cli {
    /// The feature repo (the folder holding larder.yaml).
    #[arg(
        long,
        short = 'r',
        global = true,
        default_value = ".",
        env = "LARDER_REPO"
    )]
    repo: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a sample feature repo with deterministic generated data.
    Init(InitArgs),
    /// Validate the repo, print the plan and record it in the registry.
    Apply {
        /// Print the plan without recording anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Batch lane: run the views' transformations and write offline and online stores.
    Materialize {
        /// Only these feature views (comma-separated); default: all batch views.
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
    },
    /// Serve online features over HTTP.
    Serve(ServeArgs),
    /// Read online features for some entities.
    Get(get::GetArgs),
    /// init + apply + materialize + serve, in one go.
    Quickstart {
        /// Where to create the demo repo (reused if it already holds one).
        #[arg(default_value = "larder-demo")]
        path: PathBuf,
        /// Number of demo users.
        #[arg(long, default_value_t = 100_000)]
        entities: u64,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Folder to create.
    #[arg(default_value = "larder-demo")]
    path: PathBuf,
    /// Number of demo users.
    #[arg(long, default_value_t = 100_000)]
    entities: u64,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The instant the generated timestamps lead up to (RFC 3339 or YYYY-MM-DD); default:
    /// the start of today (UTC).
    #[arg(long)]
    anchor: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Address to listen on (default: serving.host in larder.yaml).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one (default: serving.port in larder.yaml).
    #[arg(long)]
    port: Option<u16>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(args) => init(&args),
        Command::Apply { dry_run } => apply::run(&cli.repo, dry_run).await.map(|_| ()),
        Command::Materialize { views } => materialize::run(&cli.repo, &views).await,
        Command::Serve(args) => serve::run(&cli.repo, args.host, args.port).await,
        Command::Get(args) => get::run(&cli.repo, &args).await,
        Command::Quickstart {
            path,
            entities,
            serve,
        } => {
            if path.join("larder.yaml").exists() {
                println!("Reusing the feature repo in {}", path.display());
            } else {
                init(&InitArgs {
                    path: path.clone(),
                    entities,
                    seed: 42,
                    anchor: None,
                })?;
            }
            apply::run(&path, false).await?;
            let context = context::RepoContext::load(&path)?;
            let store = context.open_online_store().await?;
            materialize::run_with_store(&context, std::sync::Arc::clone(&store), &[]).await?;
            serve::run_with_store(&context, store, serve.host, serve.port).await
        }
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let anchor_micros = match &args.anchor {
        Some(text) => larder_core::Timestamp::parse(text)
            .ok_or_else(|| {
                anyhow::anyhow!("--anchor '{text}' is not a date (YYYY-MM-DD) or an RFC 3339 time")
            })?
            .as_micros(),
        None => {
            let now = larder_core::Timestamp::now().as_micros();
            now - now.rem_euclid(86_400_000_000)
        }
    };
    let options = demo::DemoOptions {
        entities: args.entities,
        seed: args.seed,
        anchor_micros,
    };
    demo::write_demo_repo(&args.path, &options)?;
    println!(
        "Created the demo feature repo in {} ({} users, 2 feature views, 26 features).\nNext: cd {} && larder apply && larder materialize && larder serve",
        args.path.display(),
        args.entities,
        args.path.display()
    );
    Ok(())
}

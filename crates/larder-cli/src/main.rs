//! `larder`: the command-line tool of the Larder feature store.

mod access;
mod apply;
mod context;
mod demo;
mod discover;
mod forget;
mod get;
mod materialize;
mod repair;
mod serve;
mod status;
mod stream;
mod training_set;

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
    /// Batch lane: run the views' transformations and write offline and online stores
    /// (online: only the rows that changed since the last run).
    Materialize {
        /// Only these feature views (comma-separated); default: all batch views.
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
        /// Only source rows with event time at or after this (YYYY-MM-DD or RFC 3339); the
        /// offline rows of the window are replaced, others kept.
        #[arg(long)]
        start: Option<String>,
        /// Only source rows with event time before this (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        end: Option<String>,
        /// Ignore change detection and rewrite every row online.
        #[arg(long)]
        full_refresh: bool,
    },
    /// Batch lane from each view's last watermark (newest materialized event time) to now.
    MaterializeIncremental {
        /// Only these feature views (comma-separated); default: all batch views.
        #[arg(long, value_delimiter = ',')]
        views: Vec<String>,
    },
    /// Benchmark helper: change one feature of a seeded fraction of the demo users' source
    /// rows, keeping their event times.
    #[command(hide = true)]
    DemoMutate {
        /// Fraction of users to change (0.02 = 2%).
        #[arg(long, default_value_t = 0.02)]
        fraction: f64,
        /// Seed that picks the users.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Instead of rewriting the sources, add a file to each (a folder) with the changed
        /// users' rows as new events, later than every event so far.
        #[arg(long)]
        append_events: bool,
    },
    /// Show the batch lane's run history (oldest first).
    Runs {
        /// Only the runs of this feature view.
        view: Option<String>,
        /// Show at most this many runs (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Serve online features over HTTP.
    Serve(ServeArgs),
    /// Freshness of every online view against its freshness SLA, from the running server
    /// (stream and direct lanes: event-to-servable lag; batch: age of the newest value), with
    /// each batch view's last materialize run.
    Status {
        /// Print the server's JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Streaming lane: replay a stream view's event history (what the broker retains, or a
    /// recorded file) through its aggregations into the offline store, as serving computed
    /// them.
    StreamBackfill {
        /// The stream feature view.
        #[arg(long)]
        view: String,
        /// A recorded history instead of the broker's: one JSON message per line, in stream
        /// order.
        #[arg(long)]
        events: Option<PathBuf>,
    },
    /// Read online features for some entities.
    Get(get::GetArgs),
    /// Erase entities from every store (online, change detection, offline history), with an
    /// audit record; `--verify` proves they are gone.
    Forget(forget::ForgetArgs),
    /// Delete online rows whose event time is further ahead than
    /// `serving.max_event_time_ahead` (written before that bound existed), so the entities'
    /// next writes land again.
    RepairFutureEventTimes(repair::RepairArgs),
    /// Build a point-in-time correct training set from the offline store.
    TrainingSet(training_set::TrainingSetArgs),
    /// Search features (or with --views, feature views) by name, description, owner, tier,
    /// tag, entity or source.
    Features(discover::FeaturesArgs),
    /// Everything about one feature view: schema, SQL, source, TTL, freshness SLA and
    /// status, checks, schedule, every version with what changed, the last runs.
    Describe {
        /// The feature view.
        view: String,
        /// Print JSON (the registry API's shape).
        #[arg(long)]
        json: bool,
    },
    /// Lineage of a source, feature view, view:feature or feature service: what is upstream
    /// and downstream, and which feature services a change to it would touch.
    Lineage {
        /// The object's name.
        name: String,
        /// Print JSON (the registry API's shape).
        #[arg(long)]
        json: bool,
    },
    /// Manage the API tokens of `larder serve` (access control).
    #[command(subcommand)]
    Token(access::TokenCommand),
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
    /// gRPC port; 0 picks a free one (default: serving.grpc_port in larder.yaml).
    #[arg(long)]
    grpc_port: Option<u16>,
}

impl ServeArgs {
    fn listen_options(&self) -> serve::ListenOptions {
        serve::ListenOptions {
            host: self.host.clone(),
            port: self.port,
            grpc_port: self.grpc_port,
        }
    }
}

/// mimalloc instead of glibc's malloc: see BENCHMARKS.md (performance round 2).
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Materialize {
            views,
            start,
            end,
            full_refresh,
        } => {
            let window = larder_offline::TimeWindow {
                start: materialize::parse_bound("--start", start.as_deref())?,
                end: materialize::parse_bound("--end", end.as_deref())?,
            };
            let request = materialize::MaterializeRequest {
                only_views: views,
                window: materialize::RunWindow::Fixed(window),
                full_refresh,
                show_progress: true,
            };
            materialize::run(&cli.repo, &request).await
        }
        Command::MaterializeIncremental { views } => {
            let request = materialize::MaterializeRequest {
                only_views: views,
                window: materialize::RunWindow::Incremental { end: None },
                full_refresh: false,
                show_progress: true,
            };
            materialize::run(&cli.repo, &request).await
        }
        Command::DemoMutate {
            fraction,
            seed,
            append_events,
        } => {
            let mutation = if append_events {
                demo::Mutation::AppendEvents
            } else {
                demo::Mutation::Correct
            };
            let changed = demo::mutate_demo_sources(&cli.repo, fraction, seed, mutation)?;
            println!("Changed {changed} users.");
            Ok(())
        }
        Command::Runs { view, limit } => materialize::show_runs(&cli.repo, view.as_deref(), limit),
        Command::Serve(args) => serve::run(&cli.repo, args.listen_options()).await,
        Command::Get(args) => get::run(&cli.repo, &args).await,
        Command::Forget(args) => forget::run(&cli.repo, &args).await,
        Command::Status { json } => status::run(&cli.repo, json).await,
        Command::StreamBackfill { view, events } => {
            stream::backfill(&cli.repo, &view, events.as_deref()).await
        }
        Command::Features(args) => {
            discover::features(&context::RepoContext::load(&cli.repo)?, &args)
        }
        Command::Describe { view, json } => {
            discover::describe(&context::RepoContext::load(&cli.repo)?, &view, json)
        }
        Command::Lineage { name, json } => {
            discover::lineage(&context::RepoContext::load(&cli.repo)?, &name, json)
        }
        Command::Token(command) => access::run(&context::RepoContext::load(&cli.repo)?, &command),
        Command::TrainingSet(args) => training_set::run(&cli.repo, &args).await,
        Command::RepairFutureEventTimes(args) => repair::run(&cli.repo, &args).await,
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
            let stores = context.open_online_stores().await?;
            let request = materialize::MaterializeRequest {
                only_views: Vec::new(),
                window: materialize::RunWindow::Fixed(larder_offline::TimeWindow::default()),
                full_refresh: false,
                show_progress: true,
            };
            let reports = materialize::run_with_stores(
                &context,
                std::sync::Arc::clone(&stores.store),
                std::sync::Arc::clone(&stores.digests),
                &request,
            )
            .await?;
            materialize::print_total(&reports);
            serve::run_with_store(&context, stores, serve.listen_options()).await
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

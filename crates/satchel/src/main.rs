//! The `satchel` command: serve the store, run workers, migrate, administer.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use satchel::app::App;
use satchel::config::Config;
use satchel::db::Exec;

/// mimalloc rather than glibc's allocator: a request makes many small allocations that are
/// freed on other threads, where glibc's arenas spent ~10 % of a download start's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "satchel",
    version,
    about = "Satchel — a self-hosted digital downloads store.",
    long_about = "Satchel — a self-hosted digital downloads store.\n\n\
        Runs embedded (SQLite + local files, the default) or scaled out (PostgreSQL + S3),\n\
        chosen by configuration: defaults → --config FILE → SATCHEL_* environment → flags.\n\n\
        Start here:  satchel serve --demo"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Data directory (SQLite database, local files, keys, email outbox).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (see docs/operations.md).
    #[arg(long, global = true, value_name = "FILE", env = "SATCHEL_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the store: web, API, in-process job worker and scheduler.
    Serve {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
        /// Seed a demo seller and sample products (idempotent) and force test-mode payments.
        #[arg(long)]
        demo: bool,
    },
    /// Run background jobs only (emails, watermarks, cleanups); start as many as you like.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Administration: accounts, API keys, signing keys.
    #[command(subcommand)]
    Admin(Admin),
    /// Name the order a leaked file was sold with, from its watermark.
    ///
    /// Prints `order: <order_id>` (and the buyer, product and order status when this
    /// store's database is reachable), or `no mark found` and exits 1. Only marks signed
    /// with this store's keys are believed, so a forged mark names nobody.
    Trace {
        /// The leaked file (PDF, ZIP, EPUB…).
        file: PathBuf,
    },
    /// Work with a running store's products (upload and publish a version).
    #[command(subcommand)]
    Product(satchel::upload_client::ProductCommand),
}

#[derive(Subcommand)]
enum Admin {
    /// Create a seller account (its own store) or an admin.
    CreateSeller {
        #[arg(long)]
        email: String,
        /// Password (at least 8 characters).
        #[arg(long, env = "SATCHEL_NEW_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "My Store")]
        store_name: String,
        /// Make the account an admin (runs the store, manages sellers).
        #[arg(long)]
        admin: bool,
    },
    /// Create an API key for a seller; the key is printed alone on the last line.
    CreateApiKey {
        #[arg(long, value_name = "EMAIL")]
        seller_email: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Add a new signing key of each kind; old keys keep verifying what they signed.
    RotateKeys,
    /// Check every order's invariants (access, refunds, commissions); exits 1 on a violation.
    Reconcile,
}

fn load_config(global: &Global) -> anyhow::Result<Config> {
    let mut cfg = Config::load(global.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration error: {e}"))?;
    if let Some(d) = &global.data_dir {
        cfg.data_dir.clone_from(d);
    }
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The runtime's size comes from the configuration (`server.workers`); a configuration
    // error is reported by `run`, once logging is set up.
    let cfg = load_config(&cli.global);
    let workers = cfg.as_ref().map_or(0, |c| c.server.workers);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if workers > 0 {
        runtime.worker_threads(workers);
    }
    let result = match runtime.build() {
        Ok(rt) => rt.block_on(run(cli, cfg)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, cfg: anyhow::Result<Config>) -> anyhow::Result<()> {
    let mut cfg = cfg?;
    satchel::config::init_logging(cfg.server.log_format);
    match cli.command {
        Command::Serve { bind, demo } => {
            if let Some(b) = bind {
                cfg.server.bind = b;
            }
            if cfg.server.bind.parse::<std::net::SocketAddr>().is_err() {
                anyhow::bail!("--bind {:?} is not an address like 127.0.0.1:8080", cfg.server.bind);
            }
            if demo {
                cfg.payments.test_mode = Some(true);
            }
            serve(cfg, demo).await
        }
        Command::Worker => {
            let app = App::open(cfg).await?;
            let stop = CancellationToken::new();
            let s = stop.clone();
            tokio::spawn(async move {
                satchel::http::shutdown_signal().await;
                s.cancel();
            });
            tracing::info!("worker started");
            app.worker(format!("worker-{}", std::process::id())).run(stop).await;
            Ok(())
        }
        Command::Migrate => {
            let app = App::open(cfg).await?;
            println!("migrations applied ({})", app.db.backend().name());
            Ok(())
        }
        Command::Admin(cmd) => admin(cfg, cmd).await,
        Command::Trace { file } => trace(cfg, &file).await,
        Command::Product(cmd) => satchel::upload_client::run(cmd).await,
    }
}

async fn serve(cfg: Config, demo: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&cfg.server.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} ({e}); pick another with --bind", cfg.server.bind))?;
    let app = App::open(cfg).await?;
    if demo {
        let created = satchel::demo::seed(&app).await?;
        tracing::info!(created, "demo data ready");
    }
    let url = app.cfg.public_url();
    println!();
    println!("  Satchel is running at {url}");
    println!("  Catalog API:  {url}/api/v1/products");
    println!("  API spec:     {url}/api/openapi.json");
    if demo {
        println!(
            "  Demo login:   {} / {}",
            satchel::demo::DEMO_EMAIL,
            satchel::demo::DEMO_PASSWORD
        );
    }
    println!(
        "  Database:     {}   Storage: {}   Payments: {}",
        app.db.backend().name(),
        app.storage.kind(),
        if app.cfg.payments.test_mode_enabled() {
            "TEST MODE (simulated, no Stripe needed)"
        } else {
            "Stripe"
        }
    );
    println!();
    let stop = CancellationToken::new();
    let worker = if app.cfg.jobs.in_process {
        let w = app.worker(format!("serve-{}", std::process::id()));
        Some(tokio::spawn(w.run(stop.clone())))
    } else {
        None
    };
    let scheduler = tokio::spawn(satchel::scheduler::run(app.clone(), stop.clone()));
    let s = stop.clone();
    tokio::spawn(async move {
        satchel::http::shutdown_signal().await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        s.cancel();
    });
    satchel::http::serve(app.clone(), listener, stop.clone()).await?;
    stop.cancel();
    if let Some(w) = worker {
        let _ = w.await;
    }
    let _ = scheduler.await;
    app.db.close().await;
    Ok(())
}

async fn trace(cfg: Config, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {} ({e})", file.display()))?;
    let keys_dir = cfg.keys_dir();
    if !keys_dir.is_dir() {
        anyhow::bail!(
            "no signing keys at {}: run trace with the store's --data-dir or --config",
            keys_dir.display()
        );
    }
    let keys = satchel::keys::Keys::load_or_generate(&keys_dir)?;
    let marks = satchel::watermark::find_marks_deep(&keys, &bytes);
    let Some((order_id, grant_id)) = marks.first() else {
        println!("no mark found");
        std::process::exit(1);
    };
    println!("order: {order_id}");
    if let Ok(app) = App::open(cfg).await {
        if let Some(t) = satchel::watermark::describe(&app.db, order_id, grant_id).await? {
            println!("buyer: {}\nproduct: {}\norder status: {}", t.email, t.product, t.status);
        }
    }
    if marks.len() > 1 {
        eprintln!(
            "note: {} marks found (the file was re-marked or merged); the newest is shown",
            marks.len()
        );
    }
    Ok(())
}

async fn admin(cfg: Config, cmd: Admin) -> anyhow::Result<()> {
    match cmd {
        Admin::RotateKeys => {
            let dir = cfg.keys_dir();
            std::fs::create_dir_all(&dir)?;
            let mac = satchel::keys::Keys::generate_mac(&dir)?;
            let ed = satchel::keys::Keys::generate_ed25519(&dir)?;
            println!("new download MAC key: {mac}\nnew Ed25519 license key: {ed}\nrestart every instance to start signing with them");
            Ok(())
        }
        Admin::Reconcile => {
            let app = App::open(cfg).await?;
            let violations = satchel::reconcile::check(&app.db).await?;
            for v in &violations {
                println!("{}\t{}\t{}", v.order_id, v.rule, v.detail);
            }
            if violations.is_empty() {
                println!("reconciliation ok");
                Ok(())
            } else {
                anyhow::bail!("{} violation(s) found", violations.len())
            }
        }
        Admin::CreateSeller {
            email,
            password,
            store_name,
            admin,
        } => {
            let app = App::open(cfg).await?;
            let tx = app.db.begin().await?;
            let role = if admin { "admin" } else { "seller" };
            let (seller, user) = satchel::accounts::create_seller_account(&tx, &email, &password, &store_name, role)
                .await
                .map_err(api_err)?;
            tx.commit().await?;
            println!(
                "created {role} {} for store {:?} ({})",
                user.email, seller.store_name, seller.id
            );
            Ok(())
        }
        Admin::CreateApiKey { seller_email, name } => {
            let app = App::open(cfg).await?;
            let key = satchel::accounts::create_api_key(&app.db, &seller_email, &name)
                .await
                .map_err(api_err)?;
            eprintln!("API key for {seller_email} (shown once; store it now):");
            println!("{key}");
            Ok(())
        }
    }
}

fn api_err(e: satchel::error::ApiError) -> anyhow::Error {
    match e {
        satchel::error::ApiError::Client { message, .. } => anyhow::anyhow!(message),
        satchel::error::ApiError::Internal(e) => e,
    }
}

//! `agentsandbox-node`: the per-node agent (DaemonSet). Today it measures sandbox activity for
//! `lifetime.idleTimeout`; it is also where the runtime installer and escape-attempt telemetry
//! live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentsandbox_operator::node::{run_activity_reporter, NodeSettings};
use anyhow::{Context, Result};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(version, about = "agentsandbox node agent")]
struct Args {
    /// This node's name (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The host's cgroup hierarchy as mounted in this container.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// A /proc showing the host's processes (run with hostPID).
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// How often sandbox counters are read, in seconds.
    #[arg(long, default_value_t = 10)]
    sample_interval_seconds: u64,
    /// How often each sandbox's activity is written to its status, in seconds.
    #[arg(long, default_value_t = 30)]
    report_period_seconds: u64,
    /// Address of /healthz.
    #[arg(long, default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
    /// Emit logs as JSON.
    #[arg(long)]
    json_logs: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    if args.json_logs {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .flatten_event(true)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tokio::spawn(async move {
        let app = Router::new().route("/healthz", get(|| async { "ok" }));
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "HTTP server failed");
        }
    });
    let settings = NodeSettings {
        node_name: args.node_name,
        cgroup_root: args.cgroup_root,
        proc_root: args.proc_root,
        sample_interval: Duration::from_secs(args.sample_interval_seconds.max(1)),
        report_period: Duration::from_secs(args.report_period_seconds.max(1)),
    };
    tokio::select! {
        _ = run_activity_reporter(client, settings) => {},
        _ = tokio::signal::ctrl_c() => info!("shutting down"),
        _ = async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler")
                .recv()
                .await
        } => info!("shutting down"),
    }
    Ok(())
}

//! `agentsandbox-node`: the per-node agent (DaemonSet). It receives the runtime shims'
//! escape-attempt telemetry on a root-only unix socket and reports it on each AgentSandbox
//! (status, condition, Event, `/metrics`), and measures sandbox activity for
//! `lifetime.idleTimeout`. `agentsandbox-node install` (the DaemonSet's init container)
//! installs the runtime on the node first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use agentsandbox_node::activity_reporter::{run_activity_reporter, sandbox_pods, NodeSettings};
use agentsandbox_node::escape_reporter::{self, EscapeReporter};
use agentsandbox_node::handoff_relay;
use agentsandbox_node::installer::{self, Restart};
use anyhow::{Context, Result};
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use clap::{Args as ClapArgs, Parser, Subcommand};
use prometheus_client::registry::Registry;
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
    /// The telemetry socket the runtime shims report escape attempts to (its directory is
    /// made root-only).
    #[arg(long, default_value = agentsandbox_telemetry::DEFAULT_SOCKET)]
    telemetry_socket: PathBuf,
    /// Address of /healthz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
    /// Emit logs as JSON.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install the runtime on this node (shim, containerd stanza, restart, node label), then
    /// exit. Idempotent: a second run changes nothing and restarts nothing.
    Install(InstallArgs),
}

#[derive(ClapArgs, Debug)]
struct InstallArgs {
    /// The shim binary carried by this image.
    #[arg(
        long,
        default_value = "/usr/local/share/agentsandbox/containerd-shim-agentsandbox-v1"
    )]
    shim_source: PathBuf,
    /// The shim's launcher carried by this image (installed next to the shim).
    #[arg(
        long,
        default_value = "/usr/local/share/agentsandbox/agentsandbox-launcher"
    )]
    launcher_source: PathBuf,
    /// The warm-pool waiter carried by this image (installed next to the shim).
    #[arg(
        long,
        default_value = "/usr/local/share/agentsandbox/agentsandbox-wait"
    )]
    waiter_source: PathBuf,
    /// Where the shim goes: a directory on containerd's PATH, as mounted here.
    #[arg(long)]
    bin_dir: PathBuf,
    /// The node's containerd configuration, as mounted here.
    #[arg(long)]
    containerd_config: PathBuf,
    /// The directory of the containerd configuration on the node (to place a drop-in file
    /// when the configuration imports a directory below it).
    #[arg(long, default_value = "/etc/containerd")]
    containerd_config_host_dir: PathBuf,
    /// The runtime handler name (the RuntimeClass's handler).
    #[arg(long, default_value = "agentsandbox")]
    handler: String,
    /// Command that restarts containerd after its configuration changed (repeat for each
    /// argument), e.g. nsenter --target 1 --mount -- systemctl restart containerd.
    #[arg(long = "restart-arg", allow_hyphen_values = true)]
    restart_command: Vec<String>,
    /// Instead of a command: create this file and wait until the node's service manager has
    /// restarted containerd and removed it.
    #[arg(long, conflicts_with = "restart_command")]
    restart_request_file: Option<PathBuf>,
    /// How long a restart may take, in seconds.
    #[arg(long, default_value_t = 300)]
    restart_timeout_seconds: u64,
}

/// `agentsandbox-node install`.
async fn install(node_name: &str, args: InstallArgs) -> Result<()> {
    let waiter = installer::install_waiter(&args.waiter_source, &args.bin_dir)?;
    info!(changed = waiter, dir = %args.bin_dir.display(), "warm-pool waiter {}", if waiter { "installed" } else { "unchanged" });
    let launcher = installer::install_launcher(&args.launcher_source, &args.bin_dir)?;
    info!(changed = launcher, dir = %args.bin_dir.display(), "launcher {}", if launcher { "installed" } else { "unchanged" });
    let shim = installer::install_shim(&args.shim_source, &args.bin_dir)?;
    info!(changed = shim, dir = %args.bin_dir.display(), "shim {}", if shim { "installed" } else { "unchanged" });
    let config = installer::install_config(
        &args.containerd_config,
        &args.containerd_config_host_dir,
        &args.handler,
    )?;
    info!(changed = config, path = %args.containerd_config.display(), handler = %args.handler,
        "containerd runtime stanza {}", if config { "written (a drop-in in the imports directory, or in the file with the original kept as *.agentsandbox.bak)" } else { "unchanged" });
    if config {
        let restart = match (&args.restart_request_file, args.restart_command.is_empty()) {
            (Some(file), _) => Restart::RequestFile(file.clone()),
            (None, false) => Restart::Command(args.restart_command.clone()),
            (None, true) => Restart::None,
        };
        info!(?restart, "restarting containerd");
        let timeout = Duration::from_secs(args.restart_timeout_seconds);
        tokio::task::spawn_blocking(move || installer::restart_containerd(&restart, timeout))
            .await??;
        info!("containerd restarted");
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let patch = serde_json::json!({"metadata": {"labels": {installer::NODE_LABEL: installer::NODE_LABEL_VALUE}}});
    nodes
        .patch(
            node_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("labelling node {node_name}"))?;
    info!(node = %node_name, label = %format!("{}={}", installer::NODE_LABEL, installer::NODE_LABEL_VALUE), "node labelled: the runtime is ready");
    Ok(())
}

async fn metrics(State(registry): State<Arc<Registry>>) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        error!(error = %e, "encoding metrics failed");
    }
    out
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
    if let Some(Command::Install(install_args)) = args.command {
        return install(&args.node_name, install_args).await;
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let reporter = EscapeReporter::default();
    let mut registry = Registry::with_prefix("agentsandbox");
    reporter.metrics().register(&mut registry);
    let registry = Arc::new(registry);
    let relay = Arc::new(handoff_relay::Relay {
        key: agentsandbox_operator::handoff::HandoffKey::from_env()?,
        socket_dir: args
            .telemetry_socket
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
            .join(agentsandbox_contract::handoff::SOCKET_DIR),
    });
    if relay.key.is_none() {
        info!("no handoff key: warm pool handoffs to this node are refused");
    }
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tokio::spawn(async move {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/metrics", get(metrics))
            .with_state(registry)
            .merge(handoff_relay::router(relay));
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "HTTP server failed");
        }
    });
    let (pods, watch_pods) = sandbox_pods(&client, &args.node_name);
    tokio::spawn(watch_pods);
    // Reports are mapped to sandboxes through this node's pods: serve once they are known.
    pods.wait_until_ready()
        .await
        .context("watching this node's sandbox pods")?;
    tokio::spawn(escape_reporter::run_writer(
        reporter.clone(),
        client.clone(),
        pods.clone(),
        args.node_name.clone(),
    ));
    let socket = args.telemetry_socket.clone();
    let telemetry = tokio::spawn(escape_reporter::serve(reporter, socket));
    let settings = NodeSettings {
        node_name: args.node_name,
        cgroup_root: args.cgroup_root,
        proc_root: args.proc_root,
        sample_interval: Duration::from_secs(args.sample_interval_seconds.max(1)),
        report_period: Duration::from_secs(args.report_period_seconds.max(1)),
    };
    tokio::select! {
        _ = run_activity_reporter(client, settings, pods) => {},
        result = telemetry => {
            // Without its socket the agent is useless to the shims: fail loudly, get restarted.
            let error = match result {
                Ok(Ok(())) => anyhow::anyhow!("the telemetry server stopped"),
                Ok(Err(e)) => e,
                Err(e) => e.into(),
            };
            return Err(error.context("serving the telemetry socket"));
        }
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

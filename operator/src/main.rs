//! `agentsandbox-operator`: the AgentSandbox controller process, with leader election,
//! `/metrics`, `/healthz` and `/readyz`, JSON or text logs, and graceful shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use agentsandbox_operator::api::AgentSandbox;
use agentsandbox_operator::controller::{self, Context};
use agentsandbox_operator::leader::LeaderElector;
use agentsandbox_operator::metrics::Metrics;
use agentsandbox_operator::resources::OperatorSettings;
use anyhow::{bail, Context as _, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::{Parser, ValueEnum};
use kube::runtime::reflector::Store;
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Reconciles AgentSandbox resources into hardened pods"
)]
struct Args {
    /// RuntimeClass of sandbox pods. An empty value runs them on the cluster's default runtime
    /// with pod-level hardening only (the Hardened condition then says False).
    #[arg(
        long,
        env = "AGENTSANDBOX_RUNTIME_CLASS",
        default_value = "agentsandbox"
    )]
    runtime_class_name: String,

    /// The cluster's DNS domain, for sandbox service names.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,

    /// Namespace of the cluster DNS pods (for network.allowDNS).
    #[arg(long, default_value = "kube-system")]
    dns_namespace: String,

    /// Labels of the cluster DNS pods, as key=value[,key=value].
    #[arg(long, default_value = "k8s-app=kube-dns")]
    dns_pod_labels: String,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,

    /// Elect a leader through a Lease so that several replicas can run.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,

    /// Namespace of the leader-election Lease (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, default_value = "agentsandbox-operator")]
    lease_name: String,

    /// Namespace of the node agents (warm pool handoffs go to the agent on a pod's node).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    node_agent_namespace: String,

    /// Label selector of the node agents' pods.
    #[arg(long, default_value = "app.kubernetes.io/component=node")]
    node_agent_selector: String,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--dns-pod-labels: expected key=value, got {pair:?}"),
        })
        .collect()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    store: Store<AgentSandbox>,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(state): State<HttpState>) -> String {
    state.metrics.count_phases(&state.store);
    state.metrics.encode()
}

async fn ready_handler(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// The receiving end of a channel as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);

    let settings = OperatorSettings {
        runtime_class_name: Some(args.runtime_class_name.clone()).filter(|c| !c.is_empty()),
        cluster_domain: args.cluster_domain.clone(),
        dns_namespace: args.dns_namespace.clone(),
        dns_pod_labels: parse_labels(&args.dns_pod_labels)?,
        node_agent_namespace: args.node_agent_namespace.clone(),
        node_agent_selector: args.node_agent_selector.clone(),
        ..OperatorSettings::default()
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        format!(
            "{}-{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
            std::process::id()
        )
    });

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let sandbox_controller = controller::controller(client.clone());
    let http_state = HttpState {
        metrics: metrics.clone(),
        store: sandbox_controller.store(),
        ready: ready.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(http_state);
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    info!(addr = %args.http_addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "HTTP server failed");
        }
    });

    controller::check_crd(&client).await?;
    // Standby replicas are ready too: they serve and wait for the lease.
    ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let elector = args.leader_election.then(|| {
        LeaderElector::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
        )
    });
    if let Some(elector) = &elector {
        tokio::select! {
            _ = elector.acquire() => {},
            _ = stopped() => return Ok(()),
        }
    }

    let handoff = agentsandbox_operator::handoff::HandoffKey::from_env()?
        .map(agentsandbox_operator::handoff::HandoffClient::new);
    if handoff.is_none() {
        info!("no handoff key (AGENTSANDBOX_HANDOFF_KEY): sandboxes from templates start cold");
    }
    let pool_controller = agentsandbox_operator::pool::controller(client.clone());
    let (refill_tx, refill_rx) = tokio::sync::mpsc::unbounded_channel();
    let caches =
        agentsandbox_operator::claim::Caches::start(&client, pool_controller.store(), &settings)
            .await;
    let mut ctx = Context::new(client, settings, metrics, identity);
    ctx.caches = Some(caches);
    ctx.pool_refill = Some(refill_tx);
    ctx.handoff = handoff;
    let ctx = Arc::new(ctx);
    let pools = agentsandbox_operator::pool::run(
        pool_controller,
        ctx.clone(),
        tokio_stream_of(refill_rx),
        stopped(),
    );
    let lost_leadership = async {
        match &elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = futures::future::join(controller::run(sandbox_controller, ctx, stopped()), pools) => {
            info!("controllers stopped");
        }
        _ = lost_leadership => {
            error!("lost leadership: exiting so that only one replica reconciles");
            std::process::exit(1);
        }
    }
    if let Some(elector) = &elector {
        elector.release().await;
    }
    Ok(())
}

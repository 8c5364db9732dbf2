//! The `clusterdns` command: `serve` runs the server, `check-config` validates a config file,
//! `explain` and `dump` ask a running server's admin endpoint, `doctor` checks the machine,
//! `import-kube-dns` converts kube-dns's ConfigMap.
//!
//! `serve` wires the parts together in the order data flows: config -> metrics -> zone ->
//! sources (initial load) -> upstream forwarder -> handler -> sockets -> HTTP endpoints, then
//! prints one `listening <kind> <addr>` line per listener on stdout and runs until SIGTERM or
//! SIGINT.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clusterdns::config::{Config, LogFormat, PodMode, ServeArgs};
use clusterdns::ops::admin::{AdminState, admin_router};
use clusterdns::ops::explain::ExplainContext;
use clusterdns::ops::reload;
use clusterdns::ops::{http, metrics::Metrics};
use clusterdns::server::RunningListener;
use clusterdns::server::handler::{Handler, Trace};
use clusterdns::source::kubernetes::{self, KubernetesOptions, KubernetesSource};
use clusterdns::source::manifests::ManifestSource;
use clusterdns::source::{EventSink, SourceEvent};
use clusterdns::upstream::{Resolver, resolv_conf};
use clusterdns::zone::{Zone, ZoneConfig};
use hickory_proto::rr::Name;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "clusterdns",
    version,
    about = "Cluster DNS server for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DNS server.
    Serve(Box<ServeArgs>),
    /// Validate a config file and print what would run.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Check this machine's kernel settings, limits, listen ports and upstreams for DNS.
    Doctor(clusterdns::ops::doctor::DoctorArgs),
    /// Ask a running server why a name resolves the way it does (its admin endpoint).
    Explain(clusterdns::ops::admin::ExplainArgs),
    /// Print the zone a running server serves, as an RFC 1035 zone file.
    Dump(clusterdns::ops::admin::DumpArgs),
    /// Print the clusterdns config equivalent to a kube-dns ConfigMap (YAML or JSON).
    ImportKubeDns {
        /// The ConfigMap file (`kubectl -n kube-system get configmap kube-dns -o yaml`).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor(args) => clusterdns::ops::doctor::main(&args),
        Command::Explain(args) => clusterdns::ops::admin::explain_main(&args),
        Command::Dump(args) => clusterdns::ops::admin::dump_main(&args),
        Command::ImportKubeDns { file } => clusterdns::ops::import::main(&file),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                clusterdns::ops::print_report(&format!(
                    "{}: OK\n{}\n",
                    file.display(),
                    config.describe()
                ));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(2)
            }
        },
        Command::Serve(args) => {
            let config = match args.resolve() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(config.log.format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(&args, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    error!("{error:#}");
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// How long the sources and HTTP listeners get to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Announces a bound listener on stdout: tests and scripts read the real port from here.
fn announce(kind: &str, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {kind} {addr}");
    let _ = out.flush();
}

/// What explanations say about the configuration: the source of cluster data, its filters.
fn explain_context(config: &Config, metrics: &Metrics) -> ExplainContext {
    let k = &config.kubernetes;
    let source = match &config.manifests {
        Some(dir) => format!("manifests {}", dir.display()),
        None if k.enabled => match &k.snapshot {
            Some(file) => format!(
                "kubernetes API (last-good snapshot {} when the API is unreachable at startup)",
                file.display()
            ),
            None => "kubernetes API".to_string(),
        },
        None => "none".to_string(),
    };
    let api = config.manifests.is_none() && k.enabled;
    let zone_suffix = format!(".{}", config.zone);
    let node_search = resolv_conf::read(&config.resolv_conf)
        .map(|r| r.search)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| *d != config.zone && !d.ends_with(&zone_suffix))
        .collect();
    ExplainContext {
        source,
        namespaces: k.namespaces.clone(),
        labels: k.labels.clone(),
        node_search,
        snapshot_in_use: api.then(|| metrics.snapshot_in_use.clone()),
        api_watches: if api {
            let mut kinds = vec!["Service", "EndpointSlice", "Namespace"];
            if config.pods == PodMode::Verified {
                kinds.push("Pod");
            }
            kinds
                .into_iter()
                .map(|kind| {
                    (
                        kind.to_string(),
                        metrics.source_synced.with_label_values(&[kind]),
                        metrics.source_last_sync.with_label_values(&[kind]),
                    )
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// The `--trace-name` of `config`, if any.
fn trace(config: &Config, metrics: &Metrics) -> Option<Trace> {
    let name = config.log.trace_name.as_deref()?;
    match Name::from_ascii(name) {
        Ok(name) => Some(Trace {
            name,
            context: explain_context(config, metrics),
        }),
        Err(error) => {
            warn!(name, %error, "trace name is not a domain name; not tracing");
            None
        }
    }
}

/// The upstream resolvers: the configured list, else resolv.conf's nameservers.
fn upstreams(config: &Config) -> (Vec<SocketAddr>, clusterdns::config::UpstreamConfig) {
    let mut upstream_config = config.upstream.clone();
    if !config.upstreams.is_empty() {
        return (config.upstreams.clone(), upstream_config);
    }
    match resolv_conf::read(&config.resolv_conf) {
        Ok(resolv) => {
            if !upstream_config.timeout_explicit
                && let Some(timeout) = resolv.timeout
            {
                upstream_config.timeout = timeout;
                upstream_config.deadline = upstream_config.deadline.max(timeout);
            }
            if upstream_config.attempts == 0
                && let Some(attempts) = resolv.attempts
            {
                upstream_config.attempts = attempts;
            }
            if resolv.nameservers.is_empty() {
                warn!(path = %config.resolv_conf.display(), "no nameserver in resolv.conf; names outside the cluster get SERVFAIL");
            }
            (resolv.nameservers, upstream_config)
        }
        Err(error) => {
            warn!(path = %config.resolv_conf.display(), %error, "cannot read resolv.conf; names outside the cluster get SERVFAIL");
            (Vec::new(), upstream_config)
        }
    }
}

async fn serve(args: &ServeArgs, config: Config) -> Result<()> {
    for warning in clusterdns::ops::doctor::startup_warnings(&config) {
        warn!("{warning}");
    }
    let metrics = Arc::new(Metrics::new());
    // Bound before anything else is built: the cache's metrics carry the `server` label of
    // the first listener as bound (the same label its request metrics get, real port
    // included), and a port already taken stops startup before any source work.
    let mut bound_listeners = Vec::new();
    for addr in &config.listen {
        let listener = clusterdns::server::bind(*addr, &config.server)
            .with_context(|| format!("cannot listen on {addr} (UDP and TCP)"))?;
        bound_listeners.push((*addr, listener));
    }
    if let Some((_, first)) = bound_listeners.first() {
        metrics.set_server_label(first.local_addr());
    }
    let origin = Name::from_ascii(format!("{}.", config.zone))
        .with_context(|| format!("zone {:?} is not a domain name", config.zone))?;
    let zone = Arc::new(Zone::new(
        ZoneConfig {
            origin,
            ttl: config.ttl,
            pods: config.pods,
        },
        metrics.clone(),
    ));
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Endpoints that left their EndpointSlices linger for a short grace (a move between two
    // slices must not make a name vanish); this task ends the graces.
    tasks.spawn(zone.clone().run_endpoint_expiry(cancel.clone()));

    match &config.manifests {
        None if config.kubernetes.enabled => {
            let k = &config.kubernetes;
            let client = kubernetes::client(k.kubeconfig.as_deref())
                .await
                .context("cannot start the Kubernetes API source")?;
            let source = KubernetesSource::new(
                client,
                KubernetesOptions {
                    namespaces: k.namespaces.clone(),
                    labels: k.labels.clone(),
                    pods: config.pods == PodMode::Verified,
                    snapshot: k.snapshot.clone(),
                    snapshot_interval: k.snapshot_interval,
                },
                metrics.clone(),
            );
            let sink: Arc<dyn EventSink> = zone.clone();
            tasks.spawn(source.run(sink, cancel.clone()));
        }
        Some(dir) => {
            let mut source = ManifestSource::new(dir.clone(), metrics.clone());
            let summary = source
                .load_initial(zone.as_ref())
                .with_context(|| format!("cannot load manifests from {}", dir.display()))?;
            info!(
                dir = %dir.display(),
                files = summary.files,
                objects = summary.objects,
                failed_files = summary.failed_files,
                "manifests loaded"
            );
            let sink: Arc<dyn EventSink> = zone.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                if let Err(error) = source.watch(sink, cancel).await {
                    error!(%error, "manifest watch stopped; the zone keeps its last data");
                }
            });
        }
        None => {
            warn!(
                "no source of cluster data configured (--kubernetes or --manifests); serving an empty cluster zone"
            );
            zone.apply(SourceEvent::InitialSyncDone);
        }
    }

    let (upstream_addrs, upstream_config) = upstreams(&config);
    info!(upstreams = ?upstream_addrs, "upstream resolvers");
    let resolver = Resolver::new(
        upstream_addrs,
        &upstream_config,
        &config.cache,
        metrics.clone(),
    );
    let handler = Arc::new(Handler::new(
        zone.clone(),
        resolver.clone(),
        metrics.clone(),
        config.server.max_udp_payload,
    ));
    handler.set_query_log(config.log.queries.then_some(config.log.query_sample));
    handler.set_trace(trace(&config, &metrics));
    handler.set_acl(&config.acl);
    {
        let handler = handler.clone();
        metrics.on_scrape(move || handler.upstream().update_metrics());
    }
    let lifecycle = Arc::new(http::Lifecycle::default());

    // DNS stops after lameduck; HTTP and the sources only after that.
    let mut listeners = Vec::new();
    for (addr, bound) in bound_listeners {
        let listener = RunningListener::serve(
            addr,
            bound,
            handler.clone(),
            metrics.clone(),
            &config.server,
        )
        .with_context(|| format!("cannot serve DNS on {addr}"))?;
        listeners.push(listener);
    }

    let endpoints = [
        (
            "metrics",
            config.metrics_listen,
            http::metrics_router(metrics.clone()),
        ),
        (
            "health",
            config.health_listen,
            http::health_router(lifecycle.clone()),
        ),
        (
            "ready",
            config.ready_listen,
            http::ready_router(zone.clone(), lifecycle.clone(), {
                let handler = handler.clone();
                Arc::new(move || {
                    handler
                        .upstream()
                        .looped_upstreams()
                        .iter()
                        .map(|addr| {
                            format!("upstream {addr} loops back to this server and is not used")
                        })
                        .collect()
                })
            }),
        ),
        (
            "admin",
            config.admin_listen,
            admin_router(Arc::new(AdminState {
                zone: zone.clone(),
                handler: handler.clone(),
                context: explain_context(&config, &metrics),
            })),
        ),
    ];
    let mut http_bound = Vec::new();
    for (kind, addr, router) in endpoints {
        let Some(addr) = addr else { continue };
        let listener = http::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for {kind}"))?;
        let bound = listener.local_addr()?;
        http_bound.push((kind, bound));
        tasks.spawn(http::serve(listener, router, cancel.clone()));
        if kind == "health" {
            tasks.spawn(http::probe_health(bound, metrics.clone(), cancel.clone()));
        }
    }

    // Signals and the config file are watched before we say we are up: no SIGTERM, SIGHUP
    // or edit after that is missed.
    let shutdown = shutdown_signal();
    let mut reloads = reload::triggers(args.config.clone());
    for listener in &listeners {
        info!(addr = %listener.bound, "serving DNS on UDP and TCP");
        announce("dns", listener.bound);
    }
    for (kind, addr) in http_bound {
        announce(kind, addr);
    }

    // Only now that our own sockets answer can a probe that loops back to us be recognised.
    {
        let resolver = resolver.clone();
        tasks.spawn(async move { resolver.check_loops().await });
    }

    let mut running = Running {
        config,
        listeners,
        handler: handler.clone(),
        metrics: metrics.clone(),
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(trigger) = reloads.recv() => running.reload(args, trigger, &mut tasks).await,
        }
    }
    let Running {
        config, listeners, ..
    } = running;

    // Lameduck: say we are going while still answering, so kube-proxy takes this pod out of
    // the Service before its sockets close and no client sees a refused query.
    lifecycle.stop();
    info!(lameduck = ?config.lameduck, "SIGTERM: /health and /ready now 503; DNS keeps answering until lameduck ends");
    tokio::time::sleep(config.lameduck).await;
    info!("lameduck over: closing the DNS listeners and draining");
    for listener in listeners {
        listener.stop().await;
    }
    // Questions still waiting on an upstream get their answer (bounded by the upstream
    // deadline) before the process goes.
    let drain_until = tokio::time::Instant::now() + config.upstream.deadline;
    while handler.in_flight() > 0 && tokio::time::Instant::now() < drain_until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Sources and HTTP listeners stop on `cancel` (the Kubernetes source writes its last
    // snapshot first); whatever is still running after a short grace is cut.
    cancel.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("some tasks did not stop in time; cutting them");
        tasks.abort_all();
    }
    info!("stopped");
    Ok(())
}

/// What a reload can change while serving.
struct Running {
    /// The config in force (settings that need a restart keep their running value).
    config: Config,
    listeners: Vec<RunningListener>,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
}

impl Running {
    /// Re-reads the config (file and flags, as at startup) and applies it: new listen
    /// addresses are bound before removed ones stop, the upstream path is swapped (keeping
    /// the cache when its settings did not change), the query log follows. A config that
    /// does not validate, or a listen address that cannot be bound, changes nothing.
    async fn reload(
        &mut self,
        args: &ServeArgs,
        trigger: reload::Trigger,
        tasks: &mut JoinSet<()>,
    ) {
        let mut new = match args.resolve() {
            Ok(new) => new,
            Err(error) => {
                self.metrics.reload_failed.inc();
                error!(
                    ?trigger,
                    "config reload rejected, the running config stays: {error}"
                );
                return;
            }
        };
        let mut started = Vec::new();
        for addr in &new.listen {
            if self.listeners.iter().any(|l| l.configured == *addr) {
                continue;
            }
            match RunningListener::start(
                *addr,
                self.handler.clone(),
                self.metrics.clone(),
                &self.config.server,
            ) {
                Ok(listener) => started.push(listener),
                Err(error) => {
                    self.metrics.reload_failed.inc();
                    error!(%addr, %error, "config reload rejected, the running config stays: cannot listen on {addr}");
                    for listener in started {
                        listener.stop().await;
                    }
                    return;
                }
            }
        }
        for listener in &started {
            info!(addr = %listener.bound, "serving DNS on UDP and TCP");
        }
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| new.listen.contains(&l.configured));
        for listener in gone {
            info!(addr = %listener.bound, "no longer serving DNS on this address");
            listener.stop().await;
        }
        self.listeners = keep;
        self.listeners.extend(started);

        let old_upstream = self.handler.upstream();
        let (upstream_addrs, upstream_config) = upstreams(&new);
        let resolver = old_upstream.reconfigure(upstream_addrs, &upstream_config, &new.cache);
        for addr in old_upstream.all_upstreams() {
            if !resolver.all_upstreams().contains(&addr) {
                let to = addr.to_string();
                let _ = self.metrics.upstream_healthy.remove_label_values(&[&to]);
                let _ = self.metrics.upstream_loop.remove_label_values(&[&to]);
            }
        }
        self.handler.set_upstream(resolver.clone());
        tasks.spawn(async move { resolver.check_loops().await });
        self.handler
            .set_query_log(new.log.queries.then_some(new.log.query_sample));
        self.handler.set_trace(trace(&new, &self.metrics));
        self.handler.set_acl(&new.acl);

        let restart = reload::needs_restart(&self.config, &new);
        if !restart.is_empty() {
            warn!(
                settings = ?restart,
                "config reloaded, but these settings only change on a restart: {}",
                restart.join(", ")
            );
        }
        // What runs now: the new reloadable settings, the old ones that need a restart.
        new.zone = self.config.zone.clone();
        new.ttl = self.config.ttl;
        new.pods = self.config.pods;
        new.manifests = self.config.manifests.clone();
        new.kubernetes = self.config.kubernetes.clone();
        new.metrics_listen = self.config.metrics_listen;
        new.health_listen = self.config.health_listen;
        new.ready_listen = self.config.ready_listen;
        new.admin_listen = self.config.admin_listen;
        new.server = self.config.server.clone();
        new.log.format = self.config.log.format;
        self.config = new;
        info!(?trigger, "config reloaded");
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when
/// the future is first polled: a SIGTERM arriving right after startup must start lameduck,
/// not kill the process with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = ctrl_c => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}

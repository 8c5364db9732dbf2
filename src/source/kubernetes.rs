//! The Kubernetes API source: kube-rs watchers on Services, EndpointSlices, Namespaces and (in
//! `pods verified` mode) Pods, turned into [`SourceEvent`]s.
//!
//! Owns: the API client (kubeconfig or in-cluster service account), one `kube::runtime::watcher`
//! per watched kind (and per namespace when a namespace list is configured), turning watcher
//! events into `Apply`/`Delete`, reconciling a relist (objects that vanished while the watch
//! was away are deleted), sending `InitialSyncDone` once every watch finished its first list,
//! and the per-kind sync metrics. List/watch, bookmarks, resourceVersion bookkeeping and the
//! relist after 410 Gone are kube-rs's; this module never hand-rolls them.
//!
//! Must not touch: DNS names, records or the zone; it only emits events through an
//! [`EventSink`].
//!
//! Behaviour worth knowing:
//! - Memory: objects are handed to the sink one at a time as they stream in (kube-rs buffers one
//!   list page, 500 objects). Per watch only the keys of the objects it delivered are kept, each
//!   with the number of the list that last saw it; at the end of a relist the keys of an older
//!   list are deleted. A relist therefore never holds a second copy of the cluster.
//! - Errors: the zone keeps its data. A 410 Gone is routine (kube-rs relists at once, logged at
//!   info). Any other error marks the watch failing (one warning per change of state, not per
//!   retry), and the watch is started again, with a full list, after kube-rs's default backoff
//!   (0.8 s doubling to 30 s, with jitter). Starting over with a list makes the recovery visible
//!   (its end is an `InitDone`) and repairs whatever was missed during the outage.
//! - A clean end of a watch stream (the API server's timeout, a proxy cutting it) is not an
//!   error: kube-rs resumes the watch from the last resourceVersion it saw, nothing is missed.

use crate::ops::metrics::Metrics;
use crate::source::{ClusterObject, EventSink, ObjectKey, ObjectKind, SourceEvent};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, DefaultBackoff, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the "last sync" metrics of healthy watches are brought forward.
const METRICS_TICK: Duration = Duration::from_secs(1);

/// Why the Kubernetes source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The kubeconfig given with `--kubeconfig` cannot be read or parsed.
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig (KUBECONFIG, ~/.kube/config) nor the in-cluster service account
    /// could be used.
    #[error("cannot find the Kubernetes API: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration (bad TLS material, ...).
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// What to watch.
#[derive(Clone, Debug, Default)]
pub struct KubernetesOptions {
    /// Serve only these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// Label selector applied to Services and EndpointSlices.
    pub labels: Option<String>,
    /// Watch Pods too (`pods verified`).
    pub pods: bool,
}

/// A client for the API server: from `kubeconfig` when given, else as kube-rs infers it
/// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubernetesError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await?,
    };
    info!(api = %config.cluster_url, "Kubernetes API");
    Ok(Client::try_from(config)?)
}

/// The Kubernetes API source. [`KubernetesSource::run`] it until cancelled.
pub struct KubernetesSource {
    client: Client,
    options: KubernetesOptions,
    metrics: Arc<Metrics>,
}

/// One watch: a kind, cluster-wide or in one namespace.
struct Unit {
    kind: ObjectKind,
    /// `None`: all namespaces.
    namespace: Option<String>,
}

impl Unit {
    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} in namespace {ns}", self.kind),
            None => self.kind.to_string(),
        }
    }
}

/// What the source knows of one watch's health.
#[derive(Clone, Debug)]
struct UnitState {
    kind: ObjectKind,
    /// A list has completed at least once.
    listed: bool,
    /// Listed, and no error since the last completed list.
    healthy: bool,
    /// An error was reported and no list completed since (the warning was logged).
    failing: bool,
    /// The last moment the watch was known to be in sync.
    last_sync: Option<SystemTime>,
}

/// State shared by the watches of one source.
struct Shared {
    units: Mutex<Vec<UnitState>>,
    sink: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    initial_sync_sent: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<UnitState>> {
        // A panic while holding the lock cannot leave the states inconsistent in a way that
        // matters more than stopping would.
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A list completed: the watch is in sync.
    fn listed(&self, id: usize, what: &str) {
        let mut units = self.lock();
        let Some(unit) = units.get_mut(id) else {
            return;
        };
        if unit.failing {
            info!(
                watch = what,
                "Kubernetes API watch recovered; in sync again"
            );
        }
        unit.listed = true;
        unit.healthy = true;
        unit.failing = false;
        unit.last_sync = Some(SystemTime::now());
        let all_listed = units.iter().all(|u| u.listed);
        self.update_metrics(&units);
        drop(units);
        if all_listed
            && !self
                .initial_sync_sent
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            info!("every Kubernetes watch completed its first list: the zone is in sync");
            self.sink.handle(SourceEvent::InitialSyncDone);
        }
    }

    /// The watch failed; it will be retried.
    fn failed(&self, id: usize, what: &str, error: &watcher::Error) {
        let mut units = self.lock();
        let Some(unit) = units.get_mut(id) else {
            return;
        };
        self.metrics
            .source_errors
            .with_label_values(&[&unit.kind.to_string()])
            .inc();
        if !unit.failing {
            warn!(
                watch = what,
                %error,
                "Kubernetes API watch failing; answering from the last data, retrying with backoff"
            );
        } else {
            debug!(watch = what, %error, "Kubernetes API watch still failing");
        }
        unit.failing = true;
        unit.healthy = false;
        self.update_metrics(&units);
    }

    /// Brings the last-sync time of every healthy watch to now.
    fn tick(&self) {
        let mut units = self.lock();
        let now = SystemTime::now();
        for unit in units.iter_mut().filter(|u| u.healthy) {
            unit.last_sync = Some(now);
        }
        self.update_metrics(&units);
    }

    /// Per kind: synced when every watch of that kind is healthy; last sync is the oldest of
    /// theirs (0 until each has synced once).
    fn update_metrics(&self, units: &[UnitState]) {
        let mut kinds: HashMap<ObjectKind, (bool, Option<SystemTime>)> = HashMap::new();
        for unit in units {
            let entry = kinds.entry(unit.kind).or_insert((true, unit.last_sync));
            entry.0 &= unit.healthy;
            entry.1 = match (entry.1, unit.last_sync) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        for (kind, (synced, last)) in kinds {
            let label = kind.to_string();
            self.metrics
                .source_synced
                .with_label_values(&[&label])
                .set(i64::from(synced));
            let seconds = last
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            self.metrics
                .source_last_sync
                .with_label_values(&[&label])
                .set(seconds);
        }
    }
}

impl KubernetesSource {
    /// A source watching through `client`. Nothing happens until [`KubernetesSource::run`].
    pub fn new(client: Client, options: KubernetesOptions, metrics: Arc<Metrics>) -> Self {
        KubernetesSource {
            client,
            options,
            metrics,
        }
    }

    /// The watches this source runs.
    fn units(&self) -> Vec<Unit> {
        let mut kinds = vec![ObjectKind::Service, ObjectKind::EndpointSlice];
        if self.options.pods {
            kinds.push(ObjectKind::Pod);
        }
        let mut units = Vec::new();
        for kind in kinds {
            if self.options.namespaces.is_empty() {
                units.push(Unit {
                    kind,
                    namespace: None,
                });
            } else {
                units.extend(self.options.namespaces.iter().map(|ns| Unit {
                    kind,
                    namespace: Some(ns.clone()),
                }));
            }
        }
        units.push(Unit {
            kind: ObjectKind::Namespace,
            namespace: None,
        });
        units
    }

    /// Runs every watch until `cancel` fires. Sends `InitialSyncDone` once each has listed.
    pub async fn run(self, sink: Arc<dyn EventSink>, cancel: CancellationToken) {
        let units = self.units();
        let shared = Arc::new(Shared {
            units: Mutex::new(
                units
                    .iter()
                    .map(|u| UnitState {
                        kind: u.kind,
                        listed: false,
                        healthy: false,
                        failing: false,
                        last_sync: None,
                    })
                    .collect(),
            ),
            sink,
            metrics: self.metrics.clone(),
            initial_sync_sent: std::sync::atomic::AtomicBool::new(false),
        });
        shared.update_metrics(&shared.lock());
        let allowed: Option<Arc<HashSet<String>>> = (!self.options.namespaces.is_empty())
            .then(|| Arc::new(self.options.namespaces.iter().cloned().collect()));
        let mut tasks = tokio::task::JoinSet::new();
        for (id, unit) in units.into_iter().enumerate() {
            let mut config = watcher::Config::default();
            if let Some(labels) = &self.options.labels
                && matches!(unit.kind, ObjectKind::Service | ObjectKind::EndpointSlice)
            {
                config = config.labels(labels);
            }
            let watch = Watch {
                id,
                what: unit.describe(),
                config,
                shared: shared.clone(),
                cancel: cancel.clone(),
                allowed: None,
            };
            let client = self.client.clone();
            let ns = unit.namespace.as_deref();
            match unit.kind {
                ObjectKind::Service => {
                    tasks.spawn(watch.run(api::<Service>(client, ns), |o| {
                        ClusterObject::Service(Box::new(o))
                    }));
                }
                ObjectKind::EndpointSlice => {
                    tasks.spawn(watch.run(api::<EndpointSlice>(client, ns), |o| {
                        ClusterObject::EndpointSlice(Box::new(o))
                    }));
                }
                ObjectKind::Pod => {
                    tasks.spawn(
                        watch.run(api::<Pod>(client, ns), |o| ClusterObject::Pod(Box::new(o))),
                    );
                }
                ObjectKind::Namespace => {
                    let watch = Watch {
                        allowed: allowed.clone(),
                        ..watch
                    };
                    tasks.spawn(watch.run(Api::<Namespace>::all(client), |o| {
                        ClusterObject::Namespace(Box::new(o))
                    }));
                }
            }
        }
        let mut ticker = tokio::time::interval(METRICS_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => shared.tick(),
            }
        }
        tasks.abort_all();
    }
}

/// A namespaced API: in `namespace`, or across all namespaces.
fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// One running watch.
struct Watch {
    id: usize,
    what: String,
    config: watcher::Config,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// For the Namespace watch with a namespace list: the namespaces to deliver.
    allowed: Option<Arc<HashSet<String>>>,
}

/// The keys one watch delivered, each with the number of the list that last saw it.
#[derive(Default)]
struct Keys {
    list: u64,
    keys: HashMap<ObjectKey, u64>,
}

impl Watch {
    async fn run<K>(self, api: Api<K>, wrap: fn(K) -> ClusterObject)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let mut backoff = DefaultBackoff::default();
        let mut keys = Keys::default();
        loop {
            let mut stream = std::pin::pin!(watcher::watcher(api.clone(), self.config.clone()));
            let error = loop {
                let item = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok(event)) => self.handle(event, &mut keys, wrap),
                    Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                        // kube-rs relists on the next poll.
                        info!(watch = %self.what, "resourceVersion too old (410 Gone); relisting");
                    }
                    Some(Err(error)) => break Some(error),
                    // The watcher never ends; if it did, start over.
                    None => break None,
                }
            };
            if let Some(error) = &error {
                self.shared.failed(self.id, &self.what, error);
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(30));
            debug!(watch = %self.what, ?delay, "restarting the watch with a full list");
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn handle<K>(&self, event: Event<K>, keys: &mut Keys, wrap: fn(K) -> ClusterObject) {
        let sink = self.shared.sink.as_ref();
        match event {
            Event::Init => {
                keys.list += 1;
                debug!(watch = %self.what, "listing");
            }
            Event::InitApply(object) | Event::Apply(object) => {
                let object = wrap(object);
                if !self.allows(&object) {
                    return;
                }
                if let Some(key) = object.key() {
                    keys.keys.insert(key, keys.list);
                }
                // An object without a name is counted and skipped by the zone.
                sink.handle(SourceEvent::Apply(object));
            }
            Event::Delete(object) => {
                let Some(key) = wrap(object).key() else {
                    return;
                };
                if keys.keys.remove(&key).is_some() {
                    sink.handle(SourceEvent::Delete(key));
                }
            }
            Event::InitDone => {
                let current = keys.list;
                let mut deleted = 0usize;
                keys.keys.retain(|key, list| {
                    if *list == current {
                        return true;
                    }
                    sink.handle(SourceEvent::Delete(key.clone()));
                    deleted += 1;
                    false
                });
                keys.keys.shrink_to(keys.keys.len().saturating_mul(2));
                debug!(
                    watch = %self.what,
                    objects = keys.keys.len(),
                    deleted,
                    "list complete"
                );
                self.shared.listed(self.id, &self.what);
            }
        }
    }

    fn allows(&self, object: &ClusterObject) -> bool {
        match (&self.allowed, object) {
            (Some(allowed), ClusterObject::Namespace(ns)) => ns
                .metadata
                .name
                .as_ref()
                .is_some_and(|name| allowed.contains(name)),
            _ => true,
        }
    }
}

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
//! - Snapshot (optional): with a snapshot file, each delivered object is also kept trimmed and
//!   serialized (see [`crate::source::snapshot`]), and the file is rewritten at most once per
//!   interval after a change, once every watch has listed, and once more at shutdown. When a watch fails before the first
//!   complete sync, or the first sync takes longer than 5 s, the snapshot is read and served (`clusterdns_snapshot_in_use` 1) until
//!   every watch has listed: its objects are entered as if from a list older than any real
//!   one, so the first real lists replace them and delete those that are gone.

use crate::ops::metrics::Metrics;
use crate::source::snapshot::{self, SnapshotError};
use crate::source::{ClusterObject, EventSink, ObjectKey, ObjectKind, SourceEvent};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, DefaultBackoff, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the "last sync" metrics of healthy watches are brought forward.
const METRICS_TICK: Duration = Duration::from_secs(1);
/// With a snapshot configured, how long the first lists may take before the snapshot is
/// served anyway (an API server that accepts connections but does not answer fails nothing).
const SNAPSHOT_GRACE: Duration = Duration::from_secs(5);
/// The longest wait between two tries of a failing watch. kube-rs's default backoff (client-go's:
/// 0.8 s doubling to 30 s) adds up to 100% jitter on top, so after an outage of half a minute
/// the next try could come 51 s later; a recovered API server is picked up within 30 s.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

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
    /// Keep a last-good snapshot in this file, written at most once per `snapshot_interval`.
    pub snapshot: Option<PathBuf>,
    /// Least time between two snapshot writes.
    pub snapshot_interval: Duration,
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
    /// Per watch, what it knows of its lists (its own lock: watches do not wait on each
    /// other).
    watches: Vec<Mutex<WatchState>>,
    sink: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    /// `InitialSyncDone` was sent (after the real lists, or with the snapshot).
    initial_sync_sent: AtomicBool,
    /// Every watch has listed at least once.
    all_listed: AtomicBool,
    /// The objects changed since the last snapshot write.
    dirty: AtomicBool,
    /// A watch failed before the first complete sync: time to look at the snapshot.
    wants_snapshot: tokio::sync::Notify,
    /// The snapshot was read (or tried) already.
    snapshot_tried: AtomicBool,
}

/// What one watch knows of its lists. Not a key per object: the sink holds every object
/// already, and a list that must find out what disappeared asks it
/// ([`EventSink::delete_unlisted`]); only the list in progress keeps the keys it delivered,
/// and only when the sink may hold older objects of this watch. (Two maps of 50,000 keys,
/// one per watch of Services and EndpointSlices, were 8 MB of a 120 MB server.)
struct WatchState {
    /// The kind this watch delivers.
    kind: ObjectKind,
    /// The namespace it watches (`None`: all of them).
    namespace: Option<String>,
    /// The number of the list in progress, or of the last one (0: the snapshot).
    list: u64,
    /// A list completed at least once.
    listed: bool,
    /// The sink may hold objects of this watch (it or the snapshot delivered some), so a
    /// list must find out which of them are gone.
    delivered: bool,
    /// Objects the list in progress delivered so far.
    objects: usize,
    /// The keys the list in progress delivered, when it must find out what is gone and
    /// `kept` does not say.
    seen: Option<HashSet<KeptKey>>,
    /// With a snapshot configured: the objects it is written from, by key, each with the
    /// number of the list that last saw it.
    kept: Option<HashMap<KeptKey, Entry>>,
    /// Objects of the list in progress not yet handed to the sink: a list is applied in
    /// batches of [`LIST_BATCH`] (`EventSink::handle_batch`), so a Service whose many
    /// EndpointSlices arrive together is rebuilt once per batch, not once per slice.
    batch: Vec<SourceEvent>,
}

/// Objects of a list handed to the sink at once (bounded: whole API objects are held until
/// then; the watcher's pages are 500).
const LIST_BATCH: usize = 500;

struct Entry {
    list: u64,
    /// The object as the snapshot keeps it (with a snapshot configured only): behind one
    /// more pointer so that an entry is 16 bytes, not 24, when there is none.
    json: Option<Box<Box<str>>>,
}

impl WatchState {
    fn new(kind: ObjectKind, namespace: Option<String>, keep_objects: bool) -> WatchState {
        WatchState {
            kind,
            namespace,
            list: 0,
            listed: false,
            delivered: false,
            objects: 0,
            seen: None,
            kept: keep_objects.then(HashMap::new),
            batch: Vec::new(),
        }
    }

    /// A list starts.
    fn start_list(&mut self) {
        self.list += 1;
        self.objects = 0;
        // The first list of a watch that delivered nothing yet has nothing to find gone.
        self.seen = (self.delivered && self.kept.is_none()).then(HashSet::new);
    }

    /// Whether the list in progress delivered `namespace/name`.
    fn listed_now(&self, namespace: &str, name: &str) -> bool {
        let key = format!("{namespace}/{name}");
        match (&self.kept, &self.seen) {
            (Some(kept), _) => kept.get(key.as_str()).is_some_and(|e| e.list == self.list),
            (None, Some(seen)) => seen.contains(key.as_str()),
            (None, None) => true,
        }
    }

    /// Whether the list in progress must ask the sink what is gone at its end.
    fn finds_gone(&self) -> bool {
        self.kept.is_some() || self.seen.is_some()
    }
}

/// An object's key as a watch keeps it: `namespace/name` in one allocation (the kind is the
/// watch's). An [`ObjectKey`] is 56 bytes and two allocations. Kubernetes names never
/// contain a `/`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct KeptKey(Box<str>);

impl KeptKey {
    fn new(key: &ObjectKey) -> KeptKey {
        KeptKey(format!("{}/{}", key.namespace, key.name).into())
    }
}

impl std::borrow::Borrow<str> for KeptKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave the state inconsistent in a way that matters
    // more than stopping would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<UnitState>> {
        lock(&self.units)
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
        if !all_listed || self.all_listed.swap(true, Ordering::AcqRel) {
            return;
        }
        info!("every Kubernetes watch completed its first list: the zone is in sync");
        if self.metrics.snapshot_in_use.get() != 0 {
            info!("the snapshot is replaced by the API's data");
            self.metrics.snapshot_in_use.set(0);
            self.metrics.snapshot_objects.set(0);
        }
        if !self.initial_sync_sent.swap(true, Ordering::AcqRel) {
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
        drop(units);
        if !self.initial_sync_sent.load(Ordering::Acquire)
            && !self.snapshot_tried.load(Ordering::Acquire)
        {
            self.wants_snapshot.notify_one();
        }
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

    /// Which watch an object of a kind and namespace belongs to.
    fn units_index(&self, units: &[Unit]) -> HashMap<(ObjectKind, Option<String>), usize> {
        units
            .iter()
            .enumerate()
            .map(|(id, u)| ((u.kind, u.namespace.clone()), id))
            .collect()
    }

    /// Runs every watch until `cancel` fires. Sends `InitialSyncDone` once each has listed.
    pub async fn run(self, sink: Arc<dyn EventSink>, cancel: CancellationToken) {
        let units = self.units();
        let shared = Arc::new(Shared {
            watches: units
                .iter()
                .map(|u| {
                    let keep_objects = self.options.snapshot.is_some();
                    Mutex::new(WatchState::new(u.kind, u.namespace.clone(), keep_objects))
                })
                .collect(),
            all_listed: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            wants_snapshot: tokio::sync::Notify::new(),
            snapshot_tried: AtomicBool::new(false),
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
            initial_sync_sent: AtomicBool::new(false),
        });
        shared.update_metrics(&shared.lock());
        let allowed: Option<Arc<HashSet<String>>> = (!self.options.namespaces.is_empty())
            .then(|| Arc::new(self.options.namespaces.iter().cloned().collect()));
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(path) = &self.options.snapshot {
            tasks.spawn(serve_snapshot(
                path.clone(),
                shared.clone(),
                self.units_index(&units),
                allowed.clone(),
                cancel.clone(),
            ));
            tasks.spawn(write_snapshots(
                path.clone(),
                self.options.snapshot_interval,
                shared.clone(),
                cancel.clone(),
            ));
        }
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
        // Every task stops on `cancel`; the snapshot writer writes pending changes first.
        while tasks.join_next().await.is_some() {}
    }
}

/// How long to wait before the next try of a failing watch.
fn retry_delay(backoff: &mut impl Iterator<Item = Duration>) -> Duration {
    backoff
        .next()
        .unwrap_or(MAX_RETRY_DELAY)
        .min(MAX_RETRY_DELAY)
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

impl Watch {
    async fn run<K>(self, api: Api<K>, wrap: fn(K) -> ClusterObject)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let mut backoff = DefaultBackoff::default();
        loop {
            let mut stream = std::pin::pin!(watcher::watcher(api.clone(), self.config.clone()));
            let mut delivered = false;
            let error = loop {
                let item = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok(event)) => {
                        // `Init` only says a list is starting; anything else came from the API.
                        delivered |= !matches!(event, Event::Init);
                        self.handle(event, wrap)
                    }
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
            // A watch that worked starts the backoff over (client-go does the same): one cut
            // connection after hours of service is retried in a second, not after the longest
            // delay earlier failures had reached.
            if delivered {
                backoff = DefaultBackoff::default();
            }
            let delay = retry_delay(&mut backoff);
            debug!(watch = %self.what, ?delay, "restarting the watch with a full list");
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn handle<K>(&self, event: Event<K>, wrap: fn(K) -> ClusterObject) {
        let shared = self.shared.as_ref();
        let sink = shared.sink.as_ref();
        let Some(state) = shared.watches.get(self.id) else {
            return;
        };
        let mut state = lock(state);
        match event {
            Event::Init => {
                // A list cut short (the stream failed mid-list) still delivers what it saw.
                sink.handle_batch(std::mem::take(&mut state.batch));
                state.start_list();
                debug!(watch = %self.what, "listing");
            }
            Event::InitApply(object) => {
                let object = wrap(object);
                if !self.allows(&object) {
                    return;
                }
                self.remember(&mut state, &object);
                state.batch.push(SourceEvent::Apply(object));
                if state.batch.len() >= LIST_BATCH {
                    sink.handle_batch(std::mem::take(&mut state.batch));
                }
            }
            Event::Apply(object) => {
                let object = wrap(object);
                if !self.allows(&object) {
                    return;
                }
                self.remember(&mut state, &object);
                // An object without a name is counted and skipped by the zone.
                sink.handle(SourceEvent::Apply(object));
            }
            Event::Delete(object) => {
                let object = wrap(object);
                if !self.allows(&object) {
                    return;
                }
                let Some(key) = object.key() else {
                    return;
                };
                if let Some(kept) = &mut state.kept
                    && kept.remove(&KeptKey::new(&key)).is_some()
                {
                    shared.dirty.store(true, Ordering::Release);
                }
                // The sink ignores an object it does not hold.
                sink.handle(SourceEvent::Delete(key));
            }
            Event::InitDone => {
                sink.handle_batch(std::mem::take(&mut state.batch));
                let deleted = if state.finds_gone() {
                    let listed = |namespace: &str, name: &str| state.listed_now(namespace, name);
                    sink.delete_unlisted(state.kind, state.namespace.as_deref(), &listed)
                } else {
                    0
                };
                state.seen = None;
                let current = state.list;
                if let Some(kept) = &mut state.kept {
                    kept.retain(|_, entry| entry.list == current);
                    kept.shrink_to(kept.len().saturating_mul(2));
                }
                state.listed = true;
                let objects = state.objects;
                drop(state);
                if deleted > 0 {
                    shared.dirty.store(true, Ordering::Release);
                }
                debug!(watch = %self.what, objects, deleted, "list complete");
                shared.listed(self.id, &self.what);
            }
        }
    }

    /// Records that this watch delivered `object` (and whether the snapshot must be rewritten
    /// for it).
    fn remember(&self, state: &mut WatchState, object: &ClusterObject) {
        let Some(key) = object.key() else {
            return;
        };
        state.delivered = true;
        state.objects += 1;
        let key = KeptKey::new(&key);
        let list = state.list;
        if let Some(kept) = &mut state.kept {
            let json = encode(object).map(Box::new);
            if kept.get(&key).is_none_or(|old| old.json != json) {
                self.shared.dirty.store(true, Ordering::Release);
            }
            kept.insert(key, Entry { list, json });
        } else if let Some(seen) = &mut state.seen {
            seen.insert(key);
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

/// The object trimmed and serialized for the snapshot (`None`, logged, if it cannot be).
fn encode(object: &ClusterObject) -> Option<Box<str>> {
    match snapshot::encode_object(&snapshot::trim(object)) {
        Ok(json) => Some(json),
        Err(error) => {
            warn!(%error, "object cannot be kept for the snapshot");
            None
        }
    }
}

/// Waits until a watch fails before the first complete sync, then serves the snapshot (if it
/// is intact) until the real lists complete.
async fn serve_snapshot(
    path: PathBuf,
    shared: Arc<Shared>,
    index: HashMap<(ObjectKind, Option<String>), usize>,
    allowed: Option<Arc<HashSet<String>>>,
    cancel: CancellationToken,
) {
    let why = tokio::select! {
        _ = cancel.cancelled() => return,
        _ = shared.wants_snapshot.notified() => "a watch failed",
        _ = tokio::time::sleep(SNAPSHOT_GRACE) => "no complete list yet",
    };
    if shared.snapshot_tried.swap(true, Ordering::AcqRel)
        || shared.initial_sync_sent.load(Ordering::Acquire)
    {
        return;
    }
    let read_path = path.clone();
    let read = tokio::task::spawn_blocking(move || snapshot::read(&read_path)).await;
    let snap = match read {
        Ok(Ok(snap)) => snap,
        Ok(Err(SnapshotError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            info!(path = %path.display(), "API unreachable and no snapshot yet; waiting for the API");
            return;
        }
        Ok(Err(error)) => {
            warn!(%error, "snapshot ignored; waiting for the API");
            shared
                .metrics
                .snapshot_errors
                .with_label_values(&["read"])
                .inc();
            return;
        }
        Err(error) => {
            warn!(%error, "snapshot read task failed; waiting for the API");
            return;
        }
    };
    // One batch per watch, applied under that watch's lock: the zone rebuilds each Service
    // once, not once per slice, and a list that lands meanwhile is either applied after the
    // batch or seen by it (real data wins: such an object is skipped).
    let mut by_watch: BTreeMap<usize, Vec<ClusterObject>> = BTreeMap::new();
    for object in snap.objects {
        let Some(key) = object.key() else { continue };
        let unit = if key.kind == ObjectKind::Namespace {
            if allowed.as_ref().is_some_and(|a| !a.contains(&key.name)) {
                continue;
            }
            index.get(&(key.kind, None))
        } else {
            index
                .get(&(key.kind, Some(key.namespace.clone())))
                .or_else(|| index.get(&(key.kind, None)))
        };
        if let Some(id) = unit {
            by_watch.entry(*id).or_default().push(object);
        }
    }
    let mut served = 0usize;
    for (id, objects) in by_watch {
        let Some(state) = shared.watches.get(id) else {
            continue;
        };
        let mut state = lock(state);
        // Real data wins: a watch that listed, or an object the current list already sent.
        if state.listed {
            continue;
        }
        let Some(kept) = &mut state.kept else {
            continue;
        };
        let mut batch = Vec::with_capacity(objects.len());
        for object in objects {
            let Some(key) = object.key() else { continue };
            let key = KeptKey::new(&key);
            if kept.contains_key(&key) {
                continue;
            }
            let json = encode(&object).map(Box::new);
            kept.insert(key, Entry { list: 0, json });
            batch.push(SourceEvent::Apply(object));
        }
        state.delivered |= !batch.is_empty();
        served += batch.len();
        shared.sink.handle_batch(batch);
    }
    if shared.initial_sync_sent.swap(true, Ordering::AcqRel) {
        return;
    }
    let age = SystemTime::now()
        .duration_since(snap.written)
        .unwrap_or_default();
    warn!(
        path = %path.display(),
        objects = served,
        age_seconds = age.as_secs(),
        "Kubernetes API unreachable at startup ({why}): serving the last-good snapshot until the first list"
    );
    shared.metrics.snapshot_in_use.set(1);
    shared
        .metrics
        .snapshot_objects
        .set(i64::try_from(served).unwrap_or(i64::MAX));
    shared.sink.handle(SourceEvent::InitialSyncDone);
}

/// Rewrites the snapshot at most once per `interval` after a change, once every watch listed.
async fn write_snapshots(
    path: PathBuf,
    interval: Duration,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = ticker.tick() => false,
        };
        if !shared.all_listed.load(Ordering::Acquire) || !shared.dirty.swap(false, Ordering::AcqRel)
        {
            if stopping {
                return;
            }
            continue;
        }
        let mut builder = snapshot::Builder::default();
        for state in &shared.watches {
            let state = lock(state);
            for entry in state.kept.iter().flat_map(|kept| kept.values()) {
                if let Some(json) = &entry.json {
                    builder.push(json);
                }
            }
        }
        let objects = builder.len();
        let (header, body) = builder.finish(SystemTime::now());
        let write_path = path.clone();
        let result = tokio::task::spawn_blocking(move || {
            snapshot::write_atomic(&write_path, &[&header, &body])
        })
        .await;
        match result {
            Ok(Ok(())) => {
                if failing {
                    info!(path = %path.display(), "snapshot written again");
                    failing = false;
                }
                debug!(path = %path.display(), objects, "snapshot written");
            }
            Ok(Err(error)) => {
                shared
                    .metrics
                    .snapshot_errors
                    .with_label_values(&["write"])
                    .inc();
                if !failing {
                    warn!(%error, "cannot write the snapshot; will retry after the next change");
                    failing = true;
                }
                // Try again at the next tick.
                shared.dirty.store(true, Ordering::Release);
            }
            Err(error) => warn!(%error, "snapshot write task failed"),
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the source sends, and holds the objects as a sink does (for
    /// `delete_unlisted`).
    #[derive(Default)]
    struct Recorder {
        lines: Mutex<Vec<String>>,
        held: Mutex<std::collections::BTreeSet<ObjectKey>>,
    }

    impl EventSink for Recorder {
        fn handle(&self, event: SourceEvent) {
            let line = match event {
                SourceEvent::Apply(o) => {
                    let key = o.key().expect("test objects have names");
                    let line = format!("apply {key}");
                    lock(&self.held).insert(key);
                    line
                }
                SourceEvent::Delete(k) => {
                    let line = format!("delete {k}");
                    if !lock(&self.held).remove(&k) {
                        return; // a sink ignores what it does not hold
                    }
                    line
                }
                SourceEvent::InitialSyncDone => "synced".to_string(),
            };
            lock(&self.lines).push(line);
        }

        fn unlisted(
            &self,
            kind: ObjectKind,
            namespace: Option<&str>,
            listed: &dyn Fn(&str, &str) -> bool,
        ) -> Vec<ObjectKey> {
            lock(&self.held)
                .iter()
                .filter(|k| k.kind == kind && namespace.is_none_or(|ns| ns == k.namespace))
                .filter(|k| !listed(&k.namespace, &k.name))
                .cloned()
                .collect()
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *lock(&self.lines))
        }
    }

    fn shared(kinds: &[ObjectKind], sink: Arc<Recorder>, keep_objects: bool) -> Arc<Shared> {
        Arc::new(Shared {
            units: Mutex::new(
                kinds
                    .iter()
                    .map(|&kind| UnitState {
                        kind,
                        listed: false,
                        healthy: false,
                        failing: false,
                        last_sync: None,
                    })
                    .collect(),
            ),
            watches: kinds
                .iter()
                .map(|&kind| Mutex::new(WatchState::new(kind, None, keep_objects)))
                .collect(),
            sink,
            metrics: Arc::new(Metrics::new()),
            initial_sync_sent: AtomicBool::new(false),
            all_listed: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            wants_snapshot: tokio::sync::Notify::new(),
            snapshot_tried: AtomicBool::new(false),
        })
    }

    fn watch(id: usize, shared: &Arc<Shared>, allowed: Option<&[&str]>) -> Watch {
        Watch {
            id,
            what: format!("watch {id}"),
            config: watcher::Config::default(),
            shared: shared.clone(),
            cancel: CancellationToken::new(),
            allowed: allowed.map(|a| Arc::new(a.iter().map(|s| s.to_string()).collect())),
        }
    }

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": ip}
        }))
        .expect("service")
    }

    fn ns(name: &str) -> Namespace {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns")
    }

    fn as_service(o: Service) -> ClusterObject {
        ClusterObject::Service(Box::new(o))
    }

    fn as_namespace(o: Namespace) -> ClusterObject {
        ClusterObject::Namespace(Box::new(o))
    }

    #[test]
    fn a_relist_deletes_only_what_it_did_not_see_and_sync_waits_for_every_watch() {
        let sink = Arc::new(Recorder::default());
        let shared = shared(
            &[ObjectKind::Service, ObjectKind::Namespace],
            sink.clone(),
            false,
        );
        let services = watch(0, &shared, None);
        let namespaces = watch(1, &shared, None);

        let seen = |shared: &Shared| lock(&shared.watches[0]).seen.as_ref().map(HashSet::len);
        services.handle(Event::Init, as_service);
        services.handle(Event::InitApply(svc("a", "192.0.2.1")), as_service);
        services.handle(Event::InitApply(svc("b", "192.0.2.2")), as_service);
        assert_eq!(seen(&shared), None, "a first list has nothing to find gone");
        services.handle(Event::InitDone, as_service);
        assert_eq!(sink.take(), ["apply Service ns/a", "apply Service ns/b"]);
        assert_eq!(shared.metrics.synced.get(), 0);
        assert!(
            !shared.initial_sync_sent.load(Ordering::Acquire),
            "namespaces not listed yet"
        );

        namespaces.handle(Event::Init, as_namespace);
        namespaces.handle(Event::InitDone, as_namespace);
        assert_eq!(sink.take(), ["synced"]);

        // Live changes (the sink ignores the delete of an object it does not hold).
        services.handle(Event::Apply(svc("c", "192.0.2.3")), as_service);
        services.handle(Event::Delete(svc("zz", "192.0.2.9")), as_service);
        services.handle(Event::Delete(svc("a", "192.0.2.1")), as_service);
        assert_eq!(sink.take(), ["apply Service ns/c", "delete Service ns/a"]);

        // A relist that sees b only: c is deleted at its end, not before; no second "synced".
        services.handle(Event::Init, as_service);
        services.handle(Event::InitApply(svc("b", "192.0.2.2")), as_service);
        assert_eq!(
            sink.take(),
            Vec::<String>::new(),
            "a list is handed over in batches"
        );
        assert_eq!(seen(&shared), Some(1), "a relist notes what it delivered");
        services.handle(Event::InitDone, as_service);
        assert_eq!(sink.take(), ["apply Service ns/b", "delete Service ns/c"]);
        // Between lists the watch keeps no key per object (the sink has them).
        let state = lock(&shared.watches[0]);
        assert!(state.seen.is_none() && state.kept.is_none());
        drop(state);
        // A relist in an empty cluster deletes everything; namespaces are left alone.
        namespaces.handle(Event::Apply(ns("shop")), as_namespace);
        services.handle(Event::Init, as_service);
        services.handle(Event::InitDone, as_service);
        assert_eq!(sink.take(), ["apply Namespace shop", "delete Service ns/b"]);
    }

    #[test]
    fn a_relist_of_a_namespaced_watch_deletes_only_in_its_namespace() {
        let sink = Arc::new(Recorder::default());
        let shared = shared(&[ObjectKind::Service], sink.clone(), false);
        lock(&shared.watches[0]).namespace = Some("ns".to_string());
        let services = watch(0, &shared, None);
        let mut other = svc("x", "192.0.2.9");
        other.metadata.namespace = Some("other".to_string());
        sink.handle(SourceEvent::Apply(as_service(other)));
        services.handle(Event::Apply(svc("a", "192.0.2.1")), as_service);
        services.handle(Event::Init, as_service);
        services.handle(Event::InitDone, as_service);
        assert_eq!(
            sink.take(),
            [
                "apply Service other/x",
                "apply Service ns/a",
                "delete Service ns/a",
                "synced"
            ]
        );
    }

    #[test]
    fn a_failing_watch_is_retried_at_least_every_30_s_jitter_included() {
        let mut backoff = DefaultBackoff::default();
        let delays: Vec<Duration> = (0..20).map(|_| retry_delay(&mut backoff)).collect();
        assert!(delays[0] < Duration::from_secs(2), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX_RETRY_DELAY), "{delays:?}");
        // Past the doubling, kube-rs's jitter alone would wait 30-60 s.
        assert!(
            delays[10..].iter().all(|d| *d == MAX_RETRY_DELAY),
            "{delays:?}"
        );
    }

    #[test]
    fn with_a_namespace_list_other_namespaces_are_not_delivered() {
        let sink = Arc::new(Recorder::default());
        let shared = shared(&[ObjectKind::Namespace], sink.clone(), false);
        let namespaces = watch(0, &shared, Some(&["shop"]));
        namespaces.handle(Event::Init, as_namespace);
        namespaces.handle(Event::InitApply(ns("shop")), as_namespace);
        namespaces.handle(Event::InitApply(ns("other")), as_namespace);
        namespaces.handle(Event::InitDone, as_namespace);
        namespaces.handle(Event::Delete(ns("other")), as_namespace);
        assert_eq!(sink.take(), ["apply Namespace shop", "synced"]);
    }

    #[test]
    fn metrics_per_kind_take_the_worst_watch_of_that_kind() {
        let sink = Arc::new(Recorder::default());
        let kinds = [
            ObjectKind::Service,
            ObjectKind::Service,
            ObjectKind::Namespace,
        ];
        let shared = shared(&kinds, sink, true);
        let metric = |kind: &str| {
            (
                shared
                    .metrics
                    .source_synced
                    .with_label_values(&[kind])
                    .get(),
                shared
                    .metrics
                    .source_last_sync
                    .with_label_values(&[kind])
                    .get(),
            )
        };
        shared.listed(0, "a");
        assert_eq!(
            metric("Service"),
            (0, 0.0),
            "one Service watch has not listed"
        );
        shared.listed(1, "b");
        shared.listed(2, "c");
        let (synced, first) = metric("Service");
        assert_eq!(synced, 1);
        assert!(first > 1.0e9);
        let error = watcher::Error::NoResourceVersion;
        shared.failed(1, "b", &error);
        shared.failed(1, "b", &error);
        assert_eq!(metric("Service").0, 0);
        assert_eq!(metric("Namespace").0, 1);
        assert_eq!(
            shared
                .metrics
                .source_errors
                .with_label_values(&["Service"])
                .get(),
            2
        );
        std::thread::sleep(Duration::from_millis(20));
        shared.tick();
        let held = metric("Service").1;
        assert!(held >= first);
        std::thread::sleep(Duration::from_millis(20));
        shared.tick();
        // The failing watch holds the Service time back; Namespaces advance.
        assert_eq!(metric("Service").1, held);
        assert!(metric("Namespace").1 > held);
        shared.listed(1, "b");
        assert_eq!(metric("Service").0, 1);
        assert!(metric("Service").1 > first);
    }

    #[test]
    fn kept_objects_mark_the_snapshot_dirty_only_when_they_change() {
        let sink = Arc::new(Recorder::default());
        let shared = shared(&[ObjectKind::Service], sink, true);
        let services = watch(0, &shared, None);
        services.handle(Event::Init, as_service);
        services.handle(Event::InitApply(svc("a", "192.0.2.1")), as_service);
        services.handle(Event::InitDone, as_service);
        assert!(shared.dirty.swap(false, Ordering::AcqRel));
        // A relist that brings the same object: nothing to write.
        services.handle(Event::Init, as_service);
        services.handle(Event::InitApply(svc("a", "192.0.2.1")), as_service);
        services.handle(Event::InitDone, as_service);
        assert!(!shared.dirty.load(Ordering::Acquire));
        services.handle(Event::Apply(svc("a", "192.0.2.2")), as_service);
        assert!(shared.dirty.swap(false, Ordering::AcqRel));
        services.handle(Event::Delete(svc("a", "192.0.2.2")), as_service);
        assert!(shared.dirty.swap(false, Ordering::AcqRel));
        let state = lock(&shared.watches[0]);
        assert!(state.kept.as_ref().is_some_and(HashMap::is_empty));
        drop(state);
        // A relist that no longer sees an object deletes it from the sink and the snapshot.
        services.handle(Event::Apply(svc("b", "192.0.2.3")), as_service);
        shared.dirty.store(false, Ordering::Release);
        services.handle(Event::Init, as_service);
        services.handle(Event::InitDone, as_service);
        assert!(shared.dirty.load(Ordering::Acquire));
        let state = lock(&shared.watches[0]);
        assert!(state.kept.as_ref().is_some_and(HashMap::is_empty));
        assert!(state.seen.is_none(), "the kept objects say what a list saw");
    }
}

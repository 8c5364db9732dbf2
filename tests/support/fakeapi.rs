//! A fake Kubernetes API server for the integration tests: HTTP on 127.0.0.1 (port chosen by
//! the kernel), serving what kube-rs's watcher asks of a real one for Services, EndpointSlices,
//! Namespaces and Pods, cluster-wide and per namespace:
//!
//! - `GET` list with `labelSelector` (equality and existence terms), `limit` and `continue`
//!   (pages in key order; the list's `metadata.resourceVersion` is the one of its first page);
//! - `GET ...?watch=true&resourceVersion=N`: newline-delimited JSON watch events after `N`
//!   (replayed from the history), then live ones; `N` older than the last compaction gets an
//!   `ERROR` event with a 410 `Status`, as the real API server sends it; `BOOKMARK` events every
//!   200 ms when `allowWatchBookmarks=true`;
//! - one global resourceVersion counter, bumped by every change.
//!
//! The test steers it: add/modify/delete objects, cut every watch stream, compact the history,
//! answer every request with an error status, stop it entirely and start it again on the same
//! port. Objects are kept as serialized JSON so that large generated clusters list quickly.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// A kind the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// v1 Service
    Service,
    /// discovery.k8s.io/v1 EndpointSlice
    EndpointSlice,
    /// v1 Namespace
    Namespace,
    /// v1 Pod
    Pod,
}

impl Kind {
    fn from_kind(kind: &str) -> Option<Kind> {
        Some(match kind {
            "Service" => Kind::Service,
            "EndpointSlice" => Kind::EndpointSlice,
            "Namespace" => Kind::Namespace,
            "Pod" => Kind::Pod,
            _ => return None,
        })
    }

    fn from_plural(plural: &str) -> Option<Kind> {
        Some(match plural {
            "services" => Kind::Service,
            "endpointslices" => Kind::EndpointSlice,
            "namespaces" => Kind::Namespace,
            "pods" => Kind::Pod,
            _ => return None,
        })
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
            Kind::Namespace => "NamespaceList",
            Kind::Pod => "PodList",
        }
    }
}

/// One stored object.
struct Obj {
    json: Arc<str>,
    labels: BTreeMap<String, String>,
}

/// A live watch stream.
struct Watcher {
    kind: Kind,
    namespace: Option<String>,
    selector: Vec<Term>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// Changes kept for resuming watches; beyond it the older half is compacted away, as etcd
/// does (a watch from before that gets 410 Gone).
const HISTORY_LIMIT: usize = 200_000;

/// One change, kept for watches that resume from an older resourceVersion.
struct Change {
    rv: u64,
    kind: Kind,
    namespace: String,
    line: Bytes,
    labels: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: HashMap<Kind, BTreeMap<(String, String), Obj>>,
    history: Vec<Change>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    watchers: Vec<Watcher>,
    /// Answer every request with this status.
    fail_with: Option<u16>,
    /// Requests served, by (kind, "list" | "watch").
    requests: HashMap<(Kind, &'static str), usize>,
    /// True while new watch requests are held (answered once it turns false).
    watches_held: Option<tokio::sync::watch::Sender<bool>>,
    /// Lists are held too (an API server that accepts connections and never answers).
    lists_held: bool,
}

/// A requirement of a label selector.
#[derive(Clone, Debug)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

fn parse_selector(s: &str) -> Vec<Term> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Term::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = t.strip_prefix('!') {
                Term::Absent(k.trim().into())
            } else {
                Term::Exists(t.into())
            }
        })
        .collect()
}

fn matches(selector: &[Term], labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|t| match t {
        Term::Eq(k, v) => labels.get(k) == Some(v),
        Term::Ne(k, v) => labels.get(k) != Some(v),
        Term::Exists(k) => labels.contains_key(k),
        Term::Absent(k) => !labels.contains_key(k),
    })
}

/// The fake API server. Dropping it stops it.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Where it listens (the same port across stop/start).
    pub addr: SocketAddr,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    dir: tempfile::TempDir,
}

impl FakeApi {
    /// Starts an empty fake API server on 127.0.0.1:0.
    pub fn start() -> FakeApi {
        let state = Arc::new(Mutex::new(State::default()));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake API");
        let addr = std_listener.local_addr().expect("fake API address");
        let runtime = serve(state.clone(), std_listener);
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        FakeApi {
            state,
            addr,
            runtime: Mutex::new(Some(runtime)),
            dir,
        }
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (its `kind` says which); returns its resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        let mut state = self.lock();
        apply_locked(&mut state, object)
    }

    /// Creates or replaces many objects under one lock.
    pub fn apply_all(&self, objects: impl IntoIterator<Item = Value>) {
        let mut state = self.lock();
        for object in objects {
            apply_locked(&mut state, object);
        }
    }

    /// Deletes an object; false if it did not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut state = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = state.objects.entry(kind).or_default().remove(&key) else {
            return false;
        };
        state.rv += 1;
        let rv = state.rv;
        let mut value: Value = serde_json::from_str(&old.json).expect("stored JSON");
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        record_change(&mut state, kind, namespace, "DELETED", &value, old.labels);
        true
    }

    /// Ends every open watch stream (cleanly, as an API server timeout or a proxy would).
    pub fn cut_watches(&self) {
        self.lock().watchers.clear();
    }

    /// Holds every new watch request until [`FakeApi::release_watches`] (lists are served):
    /// with [`FakeApi::cut_watches`], changes made meanwhile happen while no watch is open.
    pub fn hold_watches(&self) {
        let mut state = self.lock();
        match &state.watches_held {
            Some(tx) => {
                tx.send_replace(true);
            }
            None => state.watches_held = Some(tokio::sync::watch::channel(true).0),
        }
    }

    /// Holds every new request, lists included, until [`FakeApi::release_watches`].
    pub fn hold_everything(&self) {
        self.hold_watches();
        self.lock().lists_held = true;
    }

    /// Answers the requests held since [`FakeApi::hold_watches`] or
    /// [`FakeApi::hold_everything`].
    pub fn release_watches(&self) {
        let mut state = self.lock();
        state.lists_held = false;
        if let Some(tx) = &state.watches_held {
            tx.send_replace(false);
        }
    }

    /// Watch requests being held now.
    pub fn held_watches(&self) -> usize {
        self.lock()
            .watches_held
            .as_ref()
            .map_or(0, |tx| tx.receiver_count())
    }

    /// Forgets the history: a watch resuming from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.rv;
        state.history.clear();
    }

    /// From now on answer every request with `status` (None: serve normally). Open watch
    /// streams are cut too.
    pub fn fail_with(&self, status: Option<u16>) {
        let mut state = self.lock();
        state.fail_with = status;
        if status.is_some() {
            state.watchers.clear();
        }
    }

    /// Stops listening and drops every connection (state is kept).
    pub fn stop(&self) {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
        self.lock().watchers.clear();
    }

    /// Listens again on the same port after [`FakeApi::stop`].
    pub fn restart(&self) {
        let mut slot = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen again on {}: {e}", self.addr),
            }
        };
        *slot = Some(serve(self.state.clone(), listener));
    }

    /// List (`"list"`) or watch (`"watch"`) requests served for `kind` so far.
    pub fn requests(&self, kind: Kind, what: &'static str) -> usize {
        self.lock()
            .requests
            .get(&(kind, what))
            .copied()
            .unwrap_or(0)
    }

    /// Open watch streams.
    pub fn open_watches(&self) -> usize {
        self.lock()
            .watchers
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn apply_locked(state: &mut State, mut object: Value) -> u64 {
    let kind = object["kind"]
        .as_str()
        .and_then(Kind::from_kind)
        .expect("a kind the fake API serves");
    object["apiVersion"] = json!(kind.api_version());
    let name = object["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_string();
    let namespace = if kind == Kind::Namespace {
        String::new()
    } else {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        object["metadata"]["namespace"] = json!(ns);
        ns
    };
    state.rv += 1;
    let rv = state.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object["metadata"]["uid"].is_null() {
        object["metadata"]["uid"] = json!(format!("uid-{rv}"));
    }
    let labels: BTreeMap<String, String> = object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let json: Arc<str> = serde_json::to_string(&object).expect("serialize").into();
    let existed = state
        .objects
        .entry(kind)
        .or_default()
        .insert(
            (namespace.clone(), name),
            Obj {
                json,
                labels: labels.clone(),
            },
        )
        .is_some();
    let event = if existed { "MODIFIED" } else { "ADDED" };
    record_change(state, kind, &namespace, event, &object, labels);
    rv
}

fn record_change(
    state: &mut State,
    kind: Kind,
    namespace: &str,
    event: &str,
    object: &Value,
    labels: BTreeMap<String, String>,
) {
    let mut line = serde_json::to_vec(&json!({"type": event, "object": object})).expect("json");
    line.push(b'\n');
    let line = Bytes::from(line);
    state.watchers.retain(|w| {
        if w.kind != kind
            || w.namespace.as_deref().is_some_and(|ns| ns != namespace)
            || !matches(&w.selector, &labels)
        {
            return !w.tx.is_closed();
        }
        w.tx.send(line.clone()).is_ok()
    });
    state.history.push(Change {
        rv: state.rv,
        kind,
        namespace: namespace.to_string(),
        line,
        labels,
    });
    if state.history.len() > HISTORY_LIMIT {
        let dropped: Vec<Change> = state.history.drain(..HISTORY_LIMIT / 2).collect();
        if let Some(last) = dropped.last() {
            state.compacted = last.rv;
        }
    }
}

/// Runs the HTTP server for `state` on `listener` in a runtime of its own, so that stopping it
/// drops every connection at once.
fn serve(state: Arc<Mutex<State>>, listener: std::net::TcpListener) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("fake API runtime");
    listener.set_nonblocking(true).expect("nonblocking");
    let bookmarks = state.clone();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let router = axum::Router::new().fallback(move |request: Request| {
            let state = state.clone();
            async move {
                let watch = request
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
                let held = {
                    let state = state.lock().unwrap_or_else(|p| p.into_inner());
                    (watch || state.lists_held)
                        .then(|| state.watches_held.as_ref().map(|tx| tx.subscribe()))
                        .flatten()
                };
                if let Some(mut rx) = held {
                    let _ = rx.wait_for(|held| !held).await;
                }
                handle(&state, request)
            }
        });
        let _ = axum::serve(listener, router).await;
    });
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let mut state = bookmarks.lock().unwrap_or_else(|p| p.into_inner());
            let rv = state.rv;
            state.watchers.retain(|w| {
                if !w.bookmarks {
                    return !w.tx.is_closed();
                }
                let line = json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": match w.kind {
                            Kind::Service => "Service",
                            Kind::EndpointSlice => "EndpointSlice",
                            Kind::Namespace => "Namespace",
                            Kind::Pod => "Pod",
                        },
                        "apiVersion": w.kind.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}
                    }
                });
                let mut bytes = serde_json::to_vec(&line).expect("json");
                bytes.push(b'\n');
                w.tx.send(Bytes::from(bytes)).is_ok()
            });
        }
    });
    runtime
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code
    })
}

fn error_response(code: u16, reason: &str, message: &str) -> Response {
    let status_code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status_code,
        [(header::CONTENT_TYPE, "application/json")],
        status(code, reason, message).to_string(),
    )
        .into_response()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/api/v1[/namespaces/NS]/PLURAL` or `/apis/discovery.k8s.io/v1[/namespaces/NS]/PLURAL`.
fn route(path: &str) -> Option<(Kind, Option<String>)> {
    let rest = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/apis/discovery.k8s.io/v1/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (kind, ns) = match parts.as_slice() {
        [plural] => (Kind::from_plural(plural)?, None),
        ["namespaces", ns, plural] => (Kind::from_plural(plural)?, Some(ns.to_string())),
        _ => return None,
    };
    let group_ok = (kind == Kind::EndpointSlice) == path.starts_with("/apis/");
    (group_ok && !(kind == Kind::Namespace && ns.is_some())).then_some((kind, ns))
}

fn handle(state: &Arc<Mutex<State>>, request: Request) -> Response {
    let uri = request.uri();
    let Some((kind, namespace)) = route(uri.path()) else {
        return error_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let selector = query
        .get("labelSelector")
        .map(|s| parse_selector(s))
        .unwrap_or_default();
    let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(code) = guard.fail_with {
        return error_response(code, "InternalError", "fake API server told to fail");
    }
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    *guard
        .requests
        .entry((kind, if watch { "watch" } else { "list" }))
        .or_default() += 1;
    if watch {
        watch_response(&mut guard, kind, namespace, selector, &query)
    } else {
        list_response(&guard, kind, namespace.as_deref(), &selector, &query)
    }
}

fn list_response(
    state: &State,
    kind: Kind,
    namespace: Option<&str>,
    selector: &[Term],
    query: &HashMap<String, String>,
) -> Response {
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // continue token: "<rv>:<namespace>/<name>" of the last item sent.
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token.split_once(':').and_then(|(rv, key)| {
                let (ns, name) = key.split_once('/')?;
                Some((rv.parse::<u64>().ok()?, (ns.to_string(), name.to_string())))
            });
            match parsed {
                Some((rv, key)) => (rv, Some(key)),
                None => return error_response(400, "BadRequest", "invalid continue token"),
            }
        }
        None => (state.rv, None),
    };
    let empty = BTreeMap::new();
    let objects = state.objects.get(&kind).unwrap_or(&empty);
    let range = match &after {
        Some(key) => objects.range::<(String, String), _>((
            std::ops::Bound::Excluded(key),
            std::ops::Bound::Unbounded,
        )),
        None => objects.range::<(String, String), _>(..),
    };
    let mut body = String::with_capacity(1024);
    body.push_str(&format!(
        "{{\"apiVersion\":\"{}\",\"kind\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{list_rv}\"",
        kind.api_version(),
        kind.list_kind()
    ));
    let mut items = String::new();
    let mut count = 0;
    let mut last = None;
    let mut more = false;
    for (key, obj) in range {
        if namespace.is_some_and(|ns| ns != key.0) || !matches(selector, &obj.labels) {
            continue;
        }
        if count == limit {
            more = true;
            break;
        }
        if count > 0 {
            items.push(',');
        }
        items.push_str(&obj.json);
        count += 1;
        last = Some(key);
    }
    if more && let Some((ns, name)) = last {
        body.push_str(&format!(",\"continue\":\"{list_rv}:{ns}/{name}\""));
    }
    body.push_str("},\"items\":[");
    body.push_str(&items);
    body.push_str("]}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn watch_response(
    state: &mut State,
    kind: Kind,
    namespace: Option<String>,
    selector: Vec<Term>,
    query: &HashMap<String, String>,
) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let from = query
        .get("resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let wanted = |ns: &str, labels: &BTreeMap<String, String>| {
        namespace.as_deref().is_none_or(|n| n == ns) && matches(&selector, labels)
    };
    let mut register = true;
    match from.map(|rv| rv.parse::<u64>()) {
        None => {
            // No resourceVersion: synthetic ADDED events for the current state first.
            if let Some(objects) = state.objects.get(&kind) {
                for ((ns, _), obj) in objects {
                    if wanted(ns, &obj.labels) {
                        let line = format!("{{\"type\":\"ADDED\",\"object\":{}}}\n", obj.json);
                        let _ = tx.send(Bytes::from(line));
                    }
                }
            }
        }
        Some(Err(_)) => {
            return error_response(400, "BadRequest", "invalid resourceVersion");
        }
        Some(Ok(rv)) if rv < state.compacted => {
            let error = json!({
                "type": "ERROR",
                "object": status(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", state.compacted)
                )
            });
            let _ = tx.send(Bytes::from(format!("{error}\n")));
            register = false;
        }
        Some(Ok(rv)) => {
            for change in state.history.iter().filter(|c| c.rv > rv) {
                if change.kind == kind && wanted(&change.namespace, &change.labels) {
                    let _ = tx.send(change.line.clone());
                }
            }
        }
    }
    if register {
        state.watchers.push(Watcher {
            kind,
            namespace,
            selector,
            bookmarks: query
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true"),
            tx,
        });
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Object builders (real Kubernetes JSON).

/// A generated cluster for scale tests: namespace `ns` and `n` ClusterIP services
/// `svc-<i>` (ClusterIP 10.x.y.z counting from 10.0.0.0), each with one EndpointSlice
/// `svc-<i>-1` holding one ready endpoint (10.200.y.z).
pub fn generated_cluster(ns: &str, n: usize) -> impl Iterator<Item = Value> + '_ {
    std::iter::once(namespace(ns)).chain((0..n).flat_map(move |i| {
        let name = format!("svc-{i}");
        let ip = format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);
        let ep = format!("10.200.{}.{}", i / 256 % 256, i % 256);
        [
            service(ns, &name, &ip),
            endpoint_slice(ns, &format!("{name}-1"), &name, &[&ep]),
        ]
    }))
}

/// A Namespace.
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A ClusterIP Service with one named TCP port.
pub fn service(ns: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
        }
    })
}

/// A headless Service with one named TCP port.
pub fn headless_service(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "clusterIP": "None",
            "clusterIPs": ["None"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
        }
    })
}

/// An IPv4 EndpointSlice of `service` with ready endpoints at `ips`.
pub fn endpoint_slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service, "app": service}
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// A running Pod with `ip`.
pub fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "example.org/c"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

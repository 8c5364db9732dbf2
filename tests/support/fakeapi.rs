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
//!
//! [`FakeApi::start_tls`] serves HTTPS instead, as a real API server does: a CA and a server
//! certificate (for 127.0.0.1 and localhost) generated with rcgen, a kubeconfig carrying the
//! CA as `certificate-authority-data` and a bearer token file (`tokenFile`), and requests
//! without an accepted token answered 401. The test can rotate the server certificate (a new
//! one from the same CA; open connections are cut, as an API server restarting with it does),
//! change the accepted tokens and rewrite the token file.

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
    /// Bearer tokens accepted (None: no authentication, as the plain HTTP fake).
    tokens: Option<Vec<String>>,
    /// Requests per bearer token presented ("" for none).
    token_requests: HashMap<String, usize>,
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
    /// HTTPS material, for [`FakeApi::start_tls`].
    tls: Option<Arc<tls::Tls>>,
}

impl FakeApi {
    /// Starts an empty fake API server on 127.0.0.1:0.
    pub fn start() -> FakeApi {
        let state = Arc::new(Mutex::new(State::default()));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake API");
        let addr = std_listener.local_addr().expect("fake API address");
        let runtime = serve(state.clone(), std_listener, None);
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
            tls: None,
        }
    }

    /// Starts an empty fake API server serving HTTPS on 127.0.0.1:0 with a certificate from a
    /// CA of its own, accepting the bearer token `token-1`; its kubeconfig trusts that CA
    /// (`certificate-authority-data`) and reads the token from [`FakeApi::token_file`]
    /// (`tokenFile`).
    pub fn start_tls() -> FakeApi {
        let state = Arc::new(Mutex::new(State {
            tokens: Some(vec!["token-1".to_string()]),
            ..State::default()
        }));
        let tls = Arc::new(tls::Tls::new());
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake API");
        let addr = std_listener.local_addr().expect("fake API address");
        let runtime = serve(state.clone(), std_listener, Some(tls.clone()));
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "token-1").expect("write token");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://{addr}\n\
             \x20   certificate-authority-data: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    tokenFile: {}\n",
            tls::base64(tls.ca_pem().as_bytes()),
            token_file.display()
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        FakeApi {
            state,
            addr,
            runtime: Mutex::new(Some(runtime)),
            dir,
            tls: Some(tls),
        }
    }

    /// The bearer token file the HTTPS kubeconfig names.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Replaces the token file's content atomically (write + rename, as the kubelet does).
    pub fn write_token_file(&self, token: &str) {
        let tmp = self.dir.path().join("token.tmp");
        std::fs::write(&tmp, token).expect("write token");
        std::fs::rename(&tmp, self.token_file()).expect("rename token");
    }

    /// From now on accept only these bearer tokens.
    pub fn accept_tokens(&self, tokens: &[&str]) {
        self.lock().tokens = Some(tokens.iter().map(|t| t.to_string()).collect());
    }

    /// Requests that presented `token` so far.
    pub fn token_requests(&self, token: &str) -> usize {
        self.lock().token_requests.get(token).copied().unwrap_or(0)
    }

    /// Serves a new certificate from the same CA (generation + 1) and cuts every open
    /// connection, so that clients reconnect and get it.
    pub fn rotate_certificate(&self) {
        let tls = self.tls.as_ref().expect("an HTTPS fake API");
        tls.rotate();
        self.cut_connections();
    }

    /// Drops every open HTTPS connection (watch streams and idle keep-alive ones).
    pub fn cut_connections(&self) {
        let tls = self.tls.as_ref().expect("an HTTPS fake API");
        tls.cut();
        self.lock().watchers.clear();
    }

    /// The generation of the certificate served now (1 at the start).
    pub fn certificate_generation(&self) -> u32 {
        self.tls.as_ref().map_or(0, |t| t.generation())
    }

    /// TLS handshakes that got the certificate of `generation`.
    pub fn handshakes(&self, generation: u32) -> usize {
        self.tls.as_ref().map_or(0, |t| t.handshakes(generation))
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
        // Waits for the runtime's threads: when `stop` returns the listener and every
        // connection are closed, so a change made next cannot reach the server through a
        // connection still being torn down (`shutdown_background` returned before that, and a
        // watch resumed in those milliseconds could deliver it).
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_secs(5));
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
        *slot = Some(serve(self.state.clone(), listener, self.tls.clone()));
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
/// drops every connection at once; HTTPS when `tls` is given.
fn serve(
    state: Arc<Mutex<State>>,
    listener: std::net::TcpListener,
    tls: Option<Arc<tls::Tls>>,
) -> tokio::runtime::Runtime {
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
        match tls {
            Some(tls) => {
                let _ = axum::serve(tls::Listener::new(listener, tls), router).await;
            }
            None => {
                let _ = axum::serve(listener, router).await;
            }
        }
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
    if guard.tokens.is_some() {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        *guard.token_requests.entry(token.clone()).or_default() += 1;
        if !guard.tokens.as_ref().is_some_and(|t| t.contains(&token)) {
            return error_response(401, "Unauthorized", "Unauthorized");
        }
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

/// HTTPS for the fake API: a CA, rotating server certificates, and a listener whose
/// connections can all be cut at once.
mod tls {
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use std::collections::HashMap;
    use std::future::Future;
    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::sync::mpsc;
    use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CA, the certificate served now, and the connections to cut on rotation.
    pub struct Tls {
        ca_pem: String,
        ca: rcgen::Issuer<'static, rcgen::KeyPair>,
        resolver: Arc<Resolver>,
        config: Arc<rustls::ServerConfig>,
        cut: Mutex<CancellationToken>,
    }

    /// Hands every handshake the current certificate and counts handshakes per generation.
    #[derive(Debug)]
    struct Resolver {
        current: Mutex<(u32, Arc<CertifiedKey>)>,
        handshakes: Mutex<HashMap<u32, usize>>,
    }

    impl ResolvesServerCert for Resolver {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            let (generation, key) = lock(&self.current).clone();
            *lock(&self.handshakes).entry(generation).or_default() += 1;
            Some(key)
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server certificate for 127.0.0.1 and localhost, signed by `ca`.
    fn server_key(ca: &rcgen::Issuer<'static, rcgen::KeyPair>, serial: u64) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake-kube-apiserver");
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, ca).expect("sign server certificate");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(
            CertifiedKey::from_der(vec![cert.der().clone()], der, &provider())
                .expect("certified key"),
        )
    }

    impl Tls {
        pub fn new() -> Tls {
            let ca_key = rcgen::KeyPair::generate().expect("CA key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "fake cluster CA");
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let ca_cert = params.self_signed(&ca_key).expect("self-sign CA");
            let ca = rcgen::Issuer::new(params, ca_key);
            let resolver = Arc::new(Resolver {
                current: Mutex::new((1, server_key(&ca, 1))),
                handshakes: Mutex::new(HashMap::new()),
            });
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Tls {
                ca_pem: ca_cert.pem(),
                ca,
                resolver,
                config: Arc::new(config),
                cut: Mutex::new(CancellationToken::new()),
            }
        }

        pub fn ca_pem(&self) -> &str {
            &self.ca_pem
        }

        pub fn rotate(&self) {
            let mut current = lock(&self.resolver.current);
            let generation = current.0 + 1;
            *current = (generation, server_key(&self.ca, u64::from(generation)));
        }

        pub fn cut(&self) {
            let old = std::mem::replace(&mut *lock(&self.cut), CancellationToken::new());
            old.cancel();
        }

        pub fn generation(&self) -> u32 {
            lock(&self.resolver.current).0
        }

        pub fn handshakes(&self, generation: u32) -> usize {
            lock(&self.resolver.handshakes)
                .get(&generation)
                .copied()
                .unwrap_or(0)
        }
    }

    /// Accepts TCP connections and does the TLS handshakes in tasks of their own (a client
    /// that stalls in its handshake does not hold up the others).
    pub struct Listener {
        rx: mpsc::Receiver<(Cut, SocketAddr)>,
        addr: SocketAddr,
    }

    impl Listener {
        pub fn new(listener: tokio::net::TcpListener, tls: Arc<Tls>) -> Listener {
            let addr = listener.local_addr().expect("listener address");
            let (tx, rx) = mpsc::channel(64);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, peer)) = listener.accept().await else {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    let cut = lock(&tls.cut).clone();
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            let cut = Cut {
                                inner: stream,
                                cancelled: Box::pin(cut.cancelled_owned()),
                            };
                            let _ = tx.send((cut, peer)).await;
                        }
                    });
                }
            });
            Listener { rx, addr }
        }
    }

    impl axum::serve::Listener for Listener {
        type Io = Cut;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Cut, SocketAddr) {
            match self.rx.recv().await {
                Some(conn) => conn,
                // The accept task is gone (the runtime is shutting down).
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.addr)
        }
    }

    /// A TLS connection that fails every read and write once its token is cancelled.
    pub struct Cut {
        inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    }

    impl Cut {
        fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
            match self.cancelled.as_mut().poll(cx) {
                Poll::Ready(()) => Err(io::ErrorKind::ConnectionReset.into()),
                Poll::Pending => Ok(()),
            }
        }
    }

    impl AsyncRead for Cut {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.check(cx)?;
            Pin::new(&mut this.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Cut {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.check(cx)?;
            Pin::new(&mut this.inner).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.check(cx)?;
            Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    /// Standard base64 with padding (for `certificate-authority-data`).
    pub fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

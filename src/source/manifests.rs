//! The manifest-directory source: reads and watches a directory of Kubernetes manifests.
//!
//! Owns: finding the manifest files of one directory tree (`*.yaml`, `*.yml`, `*.json`, hidden
//! entries and editor leftovers skipped), parsing them (multi-document YAML, `kind: List` and
//! typed `<Kind>List`s, JSON) into the k8s-openapi types, remembering the last good version of
//! every file, and turning file changes into the minimal [`SourceEvent`]s: `Apply` for objects
//! that are new or changed, `Delete` for objects that are gone from every file.
//!
//! Must not touch: DNS names, records or the zone. This module only emits [`SourceEvent`]s
//! through an [`EventSink`]; what they mean for DNS is the zone's business.
//!
//! Behaviour worth knowing:
//! - A file that fails to read or parse is rejected as a whole for that load: it is logged with
//!   the reason (line and column when the parser has them), counted once in
//!   `manifest_errors`, and the objects of its last good version stay in force.
//! - A document of a kind that is not served (Deployment, ConfigMap, ...) is ignored; a document
//!   without `apiVersion`/`kind` is an error, as it is for `kubectl apply`.
//! - When two files define the same object, the most recently added or changed definition is in
//!   force; removing it from that file brings back the other file's definition.

use crate::ops::metrics::Metrics;
use crate::source::{ClusterObject, EventSink, ObjectKey, ObjectKind, SourceEvent};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a burst of filesystem notifications is collected before the rescan.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Rescan period when the directory cannot be watched.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// While polling, every this many polls the content of every file is re-read (not only the
/// files whose metadata changed).
const FULL_READ_EVERY_POLLS: u32 = 30;
/// While watching, a full rescan is done this often anyway, in case a notification was lost.
const SAFETY_RESCAN: Duration = Duration::from_secs(30);
/// A file modified less than this long before it was read may be modified again without its
/// metadata changing (coarse timestamps): it is re-read on the next scan.
const RACY_WINDOW: Duration = Duration::from_secs(2);
/// Subdirectories deeper than this are not searched.
const MAX_DEPTH: usize = 16;

/// The directory source could not do its job at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest directory itself cannot be listed.
    #[error("cannot read manifest directory {}: {error}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why it cannot be read.
        error: io::Error,
    },
    /// The background rescan task died (a bug) or was cancelled by the runtime shutting down.
    #[error("manifest rescan task failed: {0}")]
    Rescan(String),
}

/// What [`ManifestSource::load_initial`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Manifest files found (including the ones that failed).
    pub files: usize,
    /// Distinct objects in force after the load.
    pub objects: usize,
    /// Files rejected because they could not be read or parsed.
    pub failed_files: usize,
}

/// The manifest-directory source. Create it with [`ManifestSource::new`], call
/// [`ManifestSource::load_initial`] once, then run [`ManifestSource::watch`].
pub struct ManifestSource {
    dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Every manifest file seen, with the objects of its last good version.
    files: BTreeMap<PathBuf, FileState>,
    /// Which files define each object, oldest definition first: the last one is in force.
    owners: HashMap<ObjectKey, Vec<PathBuf>>,
    /// `InitialSyncDone` has been sent.
    synced: bool,
    /// The directory could not be listed at the last scan (warned once, not at every poll).
    dir_unreadable: bool,
}

/// What is known of one manifest file.
#[derive(Default)]
struct FileState {
    /// Metadata at the last read; `None` forces a re-read at the next scan.
    stat: Option<StatFingerprint>,
    /// Length and hash of the content last read, good or bad; `None` when it could not be read.
    content: Option<(u64, u64)>,
    /// The last read failed; `objects` is from an older version.
    failed: bool,
    /// The objects of the last good version.
    objects: BTreeMap<ObjectKey, ClusterObject>,
}

/// Enough metadata to notice that a file was replaced or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatFingerprint {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    ctime: (i64, i64),
}

impl StatFingerprint {
    fn of(meta: &std::fs::Metadata) -> StatFingerprint {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        StatFingerprint {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            dev: meta.dev(),
            #[cfg(unix)]
            ino: meta.ino(),
            #[cfg(unix)]
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file was changed so recently (relative to `now`) that a further change
    /// might leave this fingerprint unchanged.
    fn is_racy(&self, now: SystemTime) -> bool {
        let recent = |t: SystemTime| now.duration_since(t).map_or(true, |d| d < RACY_WINDOW);
        #[cfg(unix)]
        {
            let ctime = u64::try_from(self.ctime.0).ok().and_then(|secs| {
                let nanos = u32::try_from(self.ctime.1).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            });
            if ctime.is_none_or(recent) {
                return true;
            }
        }
        self.modified.is_none_or(recent)
    }
}

/// Which files a scan re-reads.
enum ScanPlan {
    /// Every file.
    Full,
    /// Files that are new, whose metadata changed, or that are under one of these paths.
    Changed(HashSet<PathBuf>),
}

/// The outcome of one scan.
#[derive(Default)]
struct ScanReport {
    files: usize,
    failed_files: usize,
    applied: usize,
    deleted: usize,
}

/// The manifest files of the directory tree.
struct Listing {
    files: BTreeMap<PathBuf, StatFingerprint>,
    /// Paths that exist but could not be examined: the state of files under them is kept.
    unreadable: Vec<PathBuf>,
}

impl ManifestSource {
    /// A source for the manifests under `dir`. Nothing is read until
    /// [`ManifestSource::load_initial`].
    pub fn new(dir: PathBuf, metrics: Arc<Metrics>) -> ManifestSource {
        // Absolute, so that our paths and the watcher's paths compare equal.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        ManifestSource {
            dir,
            metrics,
            files: BTreeMap::new(),
            owners: HashMap::new(),
            synced: false,
            dir_unreadable: false,
        }
    }

    /// Reads every file once and sends Apply events, then SourceEvent::InitialSyncDone. Errors
    /// only when the directory itself cannot be read (a bad file is counted and skipped).
    pub fn load_initial(&mut self, sink: &dyn EventSink) -> Result<LoadSummary, ManifestError> {
        let report = self.scan(sink, &ScanPlan::Full)?;
        sink.handle(SourceEvent::InitialSyncDone);
        self.synced = true;
        let summary = LoadSummary {
            files: report.files,
            objects: self.owners.len(),
            failed_files: report.failed_files,
        };
        info!(
            dir = %self.dir.display(),
            files = summary.files,
            objects = summary.objects,
            failed_files = summary.failed_files,
            "loaded manifests"
        );
        Ok(summary)
    }

    /// Watches the directory (notify's RecommendedWatcher, recursive) and applies changes until
    /// `cancel` fires. Changes reach the sink within about 100 ms of the last write of a burst.
    /// If the directory cannot be watched, it is polled every second instead (with a warning).
    ///
    /// Starts with a rescan, so changes made between [`ManifestSource::load_initial`] and the
    /// watch are not lost; sends `InitialSyncDone` after it if `load_initial` never succeeded.
    /// Never fails because of the directory: if it becomes unreadable, the objects in force
    /// stay, with a warning, until it can be read again.
    pub async fn watch(
        self,
        sink: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> Result<(), ManifestError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = start_watcher(&self.dir, tx);
        if let Err(e) = &watcher {
            warn!(
                dir = %self.dir.display(),
                error = %e,
                "cannot watch the manifest directory; polling it every second instead"
            );
        }
        let this = self.rescan(&sink, ScanPlan::Full).await?;
        match watcher {
            Ok(watcher) => this.run_watcher(watcher, rx, sink, cancel).await,
            Err(_) => this.run_polling(sink, cancel).await,
        }
    }

    /// The event loop while notify works.
    async fn run_watcher(
        mut self,
        watcher: notify::RecommendedWatcher,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
        sink: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> Result<(), ManifestError> {
        let start = tokio::time::Instant::now() + SAFETY_RESCAN;
        let mut safety = tokio::time::interval_at(start, SAFETY_RESCAN);
        safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut dirty = HashSet::new();
            let mut full = false;
            let mut relevant = false;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = safety.tick() => full = true,
                msg = rx.recv() => match msg {
                    Some(msg) => relevant = note_event(msg, &mut dirty, &mut full),
                    None => {
                        // The watcher's thread is gone; keep going the slow way.
                        warn!(dir = %self.dir.display(), "manifest watcher stopped; polling instead");
                        drop(watcher);
                        return self.run_polling(sink, cancel).await;
                    }
                },
            }
            if !(full || relevant) {
                continue;
            }
            // Coalesce the rest of the burst (bounded: a steady stream of events cannot delay
            // the rescan by more than DEBOUNCE).
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(deadline) => break,
                    msg = rx.recv() => match msg {
                        Some(msg) => {
                            note_event(msg, &mut dirty, &mut full);
                        }
                        None => break,
                    },
                }
            }
            let plan = if full {
                ScanPlan::Full
            } else {
                ScanPlan::Changed(dirty)
            };
            self = self.rescan(&sink, plan).await?;
        }
        drop(watcher);
        Ok(())
    }

    /// The event loop when the directory cannot be watched.
    async fn run_polling(
        mut self,
        sink: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> Result<(), ManifestError> {
        let start = tokio::time::Instant::now() + POLL_INTERVAL;
        let mut ticker = tokio::time::interval_at(start, POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polls: u32 = 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            polls = polls.wrapping_add(1);
            let plan = if polls.is_multiple_of(FULL_READ_EVERY_POLLS) {
                ScanPlan::Full
            } else {
                ScanPlan::Changed(HashSet::new())
            };
            self = self.rescan(&sink, plan).await?;
        }
    }

    /// One scan on the blocking pool (it reads files).
    async fn rescan(
        self,
        sink: &Arc<dyn EventSink>,
        plan: ScanPlan,
    ) -> Result<ManifestSource, ManifestError> {
        let sink = Arc::clone(sink);
        tokio::task::spawn_blocking(move || {
            let mut this = self;
            this.scan_logged(sink.as_ref(), &plan);
            this
        })
        .await
        .map_err(|e| ManifestError::Rescan(e.to_string()))
    }

    /// A scan whose directory-level failure is logged (once) rather than returned.
    fn scan_logged(&mut self, sink: &dyn EventSink, plan: &ScanPlan) {
        match self.scan(sink, plan) {
            Ok(report) => {
                if self.dir_unreadable {
                    info!(dir = %self.dir.display(), "manifest directory readable again");
                    self.dir_unreadable = false;
                }
                if report.applied + report.deleted > 0 {
                    debug!(
                        applied = report.applied,
                        deleted = report.deleted,
                        "manifest changes applied"
                    );
                }
                if !self.synced {
                    sink.handle(SourceEvent::InitialSyncDone);
                    self.synced = true;
                }
            }
            Err(e) => {
                if !self.dir_unreadable {
                    warn!(error = %e, "keeping the objects in force until the directory is readable");
                    self.dir_unreadable = true;
                }
            }
        }
    }

    /// Lists the directory, re-reads what `plan` asks for, and sends the resulting events.
    fn scan(&mut self, sink: &dyn EventSink, plan: &ScanPlan) -> Result<ScanReport, ManifestError> {
        let listing = list_manifests(&self.dir).map_err(|error| ManifestError::ReadDir {
            path: self.dir.clone(),
            error,
        })?;
        let mut report = ScanReport::default();
        // New object sets, in load order; `None` for files that are gone.
        let mut changes: Vec<(PathBuf, Option<BTreeMap<ObjectKey, ClusterObject>>)> = Vec::new();
        // Listed, but removed before they could be read.
        let mut vanished = HashSet::new();

        for (path, stat) in &listing.files {
            let prev = self.files.get(path);
            let must_read = match plan {
                ScanPlan::Full => true,
                ScanPlan::Changed(dirty) => {
                    prev.is_none_or(|p| p.stat != Some(*stat))
                        || dirty.iter().any(|d| path.starts_with(d))
                }
            };
            if !must_read {
                report.files += 1;
                report.failed_files += usize::from(prev.is_some_and(|p| p.failed));
                continue;
            }
            let now = SystemTime::now();
            let bytes = match std::fs::read(path) {
                Ok(bytes) => Ok(bytes),
                // Removed since the listing: handled as gone below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    vanished.insert(path);
                    continue;
                }
                Err(e) => Err(format!("cannot read: {e}")),
            };
            report.files += 1;
            // Metadata read before the content: if the file changes after, the next scan sees
            // a different fingerprint.
            let settled_stat = (!stat.is_racy(now)).then_some(*stat);
            let content = bytes.as_ref().ok().map(|b| content_fingerprint(b));
            let state = self.files.entry(path.clone()).or_default();
            state.stat = settled_stat;
            if content.is_some() && content == state.content {
                // Same bytes as last time (touched, or rewritten identically): nothing to do,
                // and a file that failed is not reported again.
                report.failed_files += usize::from(state.failed);
                continue;
            }
            state.content = content;
            let parsed = bytes.and_then(|b| parse_file(path, &b, &self.metrics));
            match parsed {
                Ok(objects) => {
                    state.failed = false;
                    changes.push((path.clone(), Some(objects)));
                }
                Err(reason) => {
                    state.failed = true;
                    report.failed_files += 1;
                    self.metrics.manifest_errors.inc();
                    warn!(
                        path = %path.display(),
                        reason = %reason,
                        "rejected manifest file; its last good version (if any) stays in force"
                    );
                }
            }
        }

        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listing.files.contains_key(*p) || vanished.contains(p))
            .filter(|p| !listing.unreadable.iter().any(|u| p.starts_with(u)))
            .cloned()
            .collect();
        for path in gone {
            debug!(path = %path.display(), "manifest file removed");
            changes.push((path, None));
        }

        let mut touched = BTreeMap::new();
        for (path, objects) in changes {
            self.replace_file(&path, objects, &mut touched);
        }
        let (applied, deleted) = self.emit(touched, sink);
        report.applied = applied;
        report.deleted = deleted;
        Ok(report)
    }

    /// The definition in force for `key`, if any.
    fn effective(&self, key: &ObjectKey) -> Option<&ClusterObject> {
        let path = self.owners.get(key)?.last()?;
        self.files.get(path)?.objects.get(key)
    }

    /// Makes `objects` the current objects of `path` (`None`: the file is gone), recording in
    /// `touched` what was in force before for every key involved.
    fn replace_file(
        &mut self,
        path: &Path,
        objects: Option<BTreeMap<ObjectKey, ClusterObject>>,
        touched: &mut BTreeMap<ObjectKey, Option<ClusterObject>>,
    ) {
        let empty = BTreeMap::new();
        let new = objects.as_ref().unwrap_or(&empty);
        let old = self.files.get(path).map_or(&empty, |f| &f.objects);
        for key in old.keys().chain(new.keys()) {
            if !touched.contains_key(key) {
                touched.insert(key.clone(), self.effective(key).cloned());
            }
        }
        let removed: Vec<ObjectKey> = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        let changed: Vec<ObjectKey> = new
            .iter()
            .filter(|(k, o)| old.get(*k).is_none_or(|prev| !same_object(prev, o)))
            .map(|(k, _)| k.clone())
            .collect();

        for key in removed {
            if let Some(paths) = self.owners.get_mut(&key) {
                paths.retain(|p| p != path);
                if paths.is_empty() {
                    self.owners.remove(&key);
                }
            }
        }
        for key in changed {
            let paths = self.owners.entry(key).or_default();
            paths.retain(|p| p != path);
            if let Some(other) = paths.last() {
                warn!(
                    path = %path.display(),
                    other = %other.display(),
                    "object defined in two manifest files; the latest definition wins"
                );
            }
            paths.push(path.to_path_buf());
        }
        match objects {
            Some(objects) => self.files.entry(path.to_path_buf()).or_default().objects = objects,
            None => {
                self.files.remove(path);
            }
        }
    }

    /// Sends Apply for every touched key whose object in force changed, then Delete for every
    /// key no longer defined anywhere (make before break). Returns the counts.
    fn emit(
        &self,
        touched: BTreeMap<ObjectKey, Option<ClusterObject>>,
        sink: &dyn EventSink,
    ) -> (usize, usize) {
        let mut applied = 0;
        let mut deletes = Vec::new();
        for (key, before) in touched {
            match (before, self.effective(&key)) {
                (before, Some(after)) => {
                    if before.is_none_or(|b| !same_object(&b, after)) {
                        sink.handle(SourceEvent::Apply(after.clone()));
                        applied += 1;
                    }
                }
                (Some(_), None) => deletes.push(key),
                (None, None) => {}
            }
        }
        let deleted = deletes.len();
        for key in deletes {
            sink.handle(SourceEvent::Delete(key));
        }
        (applied, deleted)
    }
}

/// Starts a recursive watch on `dir` whose events go to `tx`.
fn start_watcher(
    dir: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<notify::Result<notify::Event>>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::RecommendedWatcher::new(
        move |event: notify::Result<notify::Event>| {
            // The receiver is gone only when the watch is over.
            let _ = tx.send(event);
        },
        notify::Config::default(),
    )?;
    watcher.watch(dir, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Records what a notification asks to rescan. Returns whether it may mean a change (our own
/// reads show up as "opened" events: those are ignored, or every scan would trigger another).
fn note_event(
    msg: notify::Result<notify::Event>,
    dirty: &mut HashSet<PathBuf>,
    full: &mut bool,
) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match msg {
        Ok(event) => {
            if event.need_rescan() {
                *full = true;
                return true;
            }
            match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
                EventKind::Access(_) => return false,
                _ => {}
            }
            dirty.extend(event.paths);
            true
        }
        Err(e) => {
            warn!(error = %e, "manifest watcher error; rescanning everything");
            *full = true;
            true
        }
    }
}

/// Whether a directory entry name is a manifest file name (not hidden, not an editor file).
fn is_manifest_name(name: &str) -> bool {
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ["yaml", "yml", "json"]
            .iter()
            .any(|e| ext.eq_ignore_ascii_case(e)),
        _ => false,
    }
}

/// Lists the manifest files under `root`, in sorted order. Fails only if `root` itself cannot
/// be listed.
fn list_manifests(root: &Path) -> io::Result<Listing> {
    let mut listing = Listing {
        files: BTreeMap::new(),
        unreadable: Vec::new(),
    };
    let mut visited = HashSet::new();
    if let Ok(canonical) = std::fs::canonicalize(root) {
        visited.insert(canonical);
    }
    let entries = std::fs::read_dir(root)?;
    walk(entries, 0, &mut listing, &mut visited);
    Ok(listing)
}

fn walk(
    entries: std::fs::ReadDir,
    depth: usize,
    listing: &mut Listing,
    visited: &mut HashSet<PathBuf>,
) {
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                warn!(error = %e, "cannot list a manifest directory entry");
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks (ConfigMap volumes are made of them).
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                if is_manifest_name(&name) {
                    warn!(path = %path.display(), error = %e, "cannot examine manifest file");
                    listing.unreadable.push(path);
                }
                continue;
            }
        };
        if meta.is_dir() {
            subdirs.push(path);
        } else if meta.is_file() && is_manifest_name(&name) {
            listing.files.insert(path, StatFingerprint::of(&meta));
        }
    }
    for dir in subdirs {
        if depth + 1 > MAX_DEPTH {
            warn!(path = %dir.display(), "manifest directory too deep; skipped");
            continue;
        }
        if let Ok(canonical) = std::fs::canonicalize(&dir)
            && !visited.insert(canonical)
        {
            debug!(path = %dir.display(), "manifest directory already visited (symlink); skipped");
            continue;
        }
        match std::fs::read_dir(&dir) {
            Ok(entries) => walk(entries, depth + 1, listing, visited),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %dir.display(), error = %e, "cannot read manifest subdirectory");
                listing.unreadable.push(dir);
            }
        }
    }
}

fn content_fingerprint(bytes: &[u8]) -> (u64, u64) {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    (bytes.len() as u64, hasher.finish())
}

/// Whether two objects are equal in every field.
fn same_object(a: &ClusterObject, b: &ClusterObject) -> bool {
    match (a, b) {
        (ClusterObject::Service(a), ClusterObject::Service(b)) => a == b,
        (ClusterObject::EndpointSlice(a), ClusterObject::EndpointSlice(b)) => a == b,
        (ClusterObject::Pod(a), ClusterObject::Pod(b)) => a == b,
        (ClusterObject::Namespace(a), ClusterObject::Namespace(b)) => a == b,
        _ => false,
    }
}

/// Parses one manifest file into its objects, keyed. Objects without a name are skipped
/// (warned and counted); any other problem rejects the whole file with the reason.
fn parse_file(
    path: &Path,
    bytes: &[u8],
    metrics: &Metrics,
) -> Result<BTreeMap<ObjectKey, ClusterObject>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8: {e}"))?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let objects = if is_json {
        parse_json(path, text)?
    } else {
        parse_yaml(path, text)?
    };
    let mut keyed = BTreeMap::new();
    for object in objects {
        match object.key() {
            Some(key) => {
                if keyed.contains_key(&key) {
                    warn!(
                        path = %path.display(),
                        object = %key,
                        "object defined twice in one file; the later definition wins"
                    );
                }
                keyed.insert(key, object);
            }
            None => {
                let kind = object.kind().to_string();
                warn!(
                    path = %path.display(),
                    kind = %kind,
                    "object without metadata.name skipped"
                );
                metrics
                    .objects_rejected
                    .with_label_values(&[kind.as_str(), "no_name"])
                    .inc();
            }
        }
    }
    Ok(keyed)
}

/// Parses a YAML stream: first every document into a `Value` (syntax) and its shape (what
/// kinds it holds), then the documents holding served kinds again, straight into the
/// k8s-openapi types, so that type errors also carry a line and column.
fn parse_yaml(path: &Path, text: &str) -> Result<Vec<ClusterObject>, String> {
    let mut shapes = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        // Stops at the first error: after one, the iterator repeats it forever.
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| format!("document {number}: {e}"))?;
        shapes.push(classify(&value, path, number)?);
    }
    let mut objects = Vec::new();
    for (index, (document, shape)) in serde_yaml_ng::Deserializer::from_str(text)
        .zip(&shapes)
        .enumerate()
    {
        if matches!(shape, DocShape::Skip) {
            continue;
        }
        let found = DocSeed(shape)
            .deserialize(document)
            .map_err(|e| format!("document {}: {e}", index + 1))?;
        objects.extend(found);
    }
    Ok(objects)
}

/// Parses a JSON file holding one object or one list, the same two-pass way as YAML.
fn parse_json(path: &Path, text: &str) -> Result<Vec<ClusterObject>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let shape = classify(&value, path, 1)?;
    if matches!(shape, DocShape::Skip) {
        return Ok(Vec::new());
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let objects = DocSeed(&shape)
        .deserialize(&mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(objects)
}

/// What one document holds.
#[derive(Debug, PartialEq)]
enum DocShape {
    /// Nothing served: empty, or a kind we do not serve.
    Skip,
    /// One object of a served kind.
    One(ObjectKind),
    /// A list; per item, its kind if served.
    List(Vec<Option<ObjectKind>>),
}

/// The served kind for an `apiVersion` and `kind`, if any.
fn served_kind(api_version: &str, kind: &str) -> Option<ObjectKind> {
    match (api_version, kind) {
        ("v1", "Service") => Some(ObjectKind::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => Some(ObjectKind::EndpointSlice),
        ("v1", "Pod") => Some(ObjectKind::Pod),
        ("v1", "Namespace") => Some(ObjectKind::Namespace),
        _ => None,
    }
}

/// The little a shape decision needs from a parsed document, YAML or JSON.
trait DocValue: Sized {
    fn field(&self, name: &str) -> Option<&Self>;
    fn text(&self) -> Option<&str>;
    fn elements(&self) -> Option<&[Self]>;
    fn is_null(&self) -> bool;
    fn is_map(&self) -> bool;
}

impl DocValue for serde_yaml_ng::Value {
    fn field(&self, name: &str) -> Option<&Self> {
        self.get(name)
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn elements(&self) -> Option<&[Self]> {
        self.as_sequence().map(Vec::as_slice)
    }
    fn is_null(&self) -> bool {
        serde_yaml_ng::Value::is_null(self)
    }
    fn is_map(&self) -> bool {
        self.is_mapping()
    }
}

impl DocValue for serde_json::Value {
    fn field(&self, name: &str) -> Option<&Self> {
        self.get(name)
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn elements(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    fn is_null(&self) -> bool {
        serde_json::Value::is_null(self)
    }
    fn is_map(&self) -> bool {
        self.is_object()
    }
}

/// Decides what document `number` of `path` holds, from its `apiVersion` and `kind`.
fn classify<V: DocValue>(value: &V, path: &Path, number: usize) -> Result<DocShape, String> {
    if value.is_null() {
        return Ok(DocShape::Skip);
    }
    if !value.is_map() {
        return Err(format!(
            "document {number}: not a Kubernetes object (expected a mapping)"
        ));
    }
    let api_version = value.field("apiVersion").and_then(V::text);
    let kind = value.field("kind").and_then(V::text);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err(format!(
            "document {number}: apiVersion and kind must both be set (as strings)"
        ));
    };
    // `kind: List` (what `kubectl get a,b -o yaml` writes: items carry their own kind), or a
    // typed list such as `ServiceList` (items may leave their kind out).
    let item_default = match kind.strip_suffix("List") {
        Some("") if api_version == "v1" => Some(None),
        Some(base) => served_kind(api_version, base).map(|_| Some((api_version, base))),
        None => None,
    };
    let Some(item_default) = item_default else {
        return Ok(match served_kind(api_version, kind) {
            Some(served) => DocShape::One(served),
            None => {
                debug!(
                    path = %path.display(),
                    document = number,
                    api_version,
                    kind,
                    "ignoring manifest of a kind that is not served"
                );
                DocShape::Skip
            }
        });
    };
    let items = match value.field("items") {
        None => return Ok(DocShape::List(Vec::new())),
        Some(items) if items.is_null() => return Ok(DocShape::List(Vec::new())),
        Some(items) => items
            .elements()
            .ok_or_else(|| format!("document {number}: {kind}: items is not a list"))?,
    };
    let mut shapes = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if !item.is_map() {
            return Err(format!(
                "document {number}: {kind} item {index}: not a Kubernetes object"
            ));
        }
        let item_api = item
            .field("apiVersion")
            .and_then(V::text)
            .or(item_default.map(|d| d.0));
        let item_kind = item
            .field("kind")
            .and_then(V::text)
            .or(item_default.map(|d| d.1));
        let (Some(item_api), Some(item_kind)) = (item_api, item_kind) else {
            return Err(format!(
                "document {number}: {kind} item {index}: apiVersion and kind must both be set"
            ));
        };
        let served = served_kind(item_api, item_kind);
        if served.is_none() {
            debug!(
                path = %path.display(),
                document = number,
                item = index,
                api_version = item_api,
                kind = item_kind,
                "ignoring list item of a kind that is not served"
            );
        }
        shapes.push(served);
    }
    Ok(DocShape::List(shapes))
}

/// Deserializes one document of a known shape into its served objects.
struct DocSeed<'a>(&'a DocShape);

impl<'de> DeserializeSeed<'de> for DocSeed<'_> {
    type Value = Vec<ClusterObject>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match self.0 {
            DocShape::Skip => {
                IgnoredAny::deserialize(deserializer)?;
                Ok(Vec::new())
            }
            DocShape::One(kind) => Ok(vec![deserialize_object(*kind, deserializer)?]),
            DocShape::List(items) => deserializer.deserialize_map(ListVisitor(items)),
        }
    }
}

fn deserialize_object<'de, D: Deserializer<'de>>(
    kind: ObjectKind,
    deserializer: D,
) -> Result<ClusterObject, D::Error> {
    Ok(match kind {
        ObjectKind::Service => {
            ClusterObject::Service(Box::new(Service::deserialize(deserializer)?))
        }
        ObjectKind::EndpointSlice => {
            ClusterObject::EndpointSlice(Box::new(EndpointSlice::deserialize(deserializer)?))
        }
        ObjectKind::Pod => ClusterObject::Pod(Box::new(Pod::deserialize(deserializer)?)),
        ObjectKind::Namespace => {
            ClusterObject::Namespace(Box::new(Namespace::deserialize(deserializer)?))
        }
    })
}

/// A list document: only `items` matters.
struct ListVisitor<'a>(&'a [Option<ObjectKind>]);

impl<'de> Visitor<'de> for ListVisitor<'_> {
    type Value = Vec<ClusterObject>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut objects = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                if objects.is_some() {
                    return Err(de::Error::duplicate_field("items"));
                }
                objects = Some(map.next_value_seed(ItemsSeed(self.0))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(objects.unwrap_or_default())
    }
}

/// The `items` of a list.
struct ItemsSeed<'a>(&'a [Option<ObjectKind>]);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = Vec<ClusterObject>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = Vec<ClusterObject>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut objects = Vec::new();
        let mut kinds = self.0.iter();
        loop {
            match kinds.next() {
                Some(kind) => match seq.next_element_seed(ItemSeed(*kind))? {
                    Some(Some(object)) => objects.push(object),
                    Some(None) => {}
                    None => break,
                },
                None => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    break;
                }
            }
        }
        Ok(objects)
    }
}

/// One list item: deserialized if its kind is served, skipped otherwise.
struct ItemSeed(Option<ObjectKind>);

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = Option<ClusterObject>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match self.0 {
            Some(kind) => deserialize_object(kind, deserializer).map(Some),
            None => {
                IgnoredAny::deserialize(deserializer)?;
                Ok(None)
            }
        }
    }
}

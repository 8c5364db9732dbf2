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
//!   Deleting one of the files never deletes an object another file still defines.
//! - A file written in place (`kubectl get ... -o yaml > file.yaml`) is not read while it is
//!   still open for writing (where the watcher reports closes: inotify), for at most
//!   `WRITE_WAIT` (5 s): its previous objects stay meanwhile instead of vanishing with the truncation.
//!   Atomic replacement (write elsewhere, rename over) and ConfigMap volume updates (`..data`
//!   symlink swap) need no such wait.

use crate::ops::metrics::Metrics;
use crate::source::snapshot::{self, Keep, trim_keeping};
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
/// A manifest file still open for writing (modified, not yet closed) keeps its previous objects
/// until its writer closes it, or this long after the first write, whichever comes first.
/// Without it, `kubectl get ... -o yaml > cluster.yaml` would be read while the shell has
/// truncated the file and kubectl has not written it yet, and every object of the file would
/// be deleted until kubectl is done. Only where the watcher reports closes (inotify).
const WRITE_WAIT: Duration = Duration::from_secs(5);
/// Whether the watcher reports "closed after writing" (`IN_CLOSE_WRITE`).
const WATCHER_REPORTS_CLOSE: bool = cfg!(any(target_os = "linux", target_os = "android"));
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

/// Objects per batch handed to the zone (as the Kubernetes source's list batches).
const EMIT_BATCH: usize = 500;

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
    /// Files still open for writing: not read until their writer is done (see [`WRITE_WAIT`]).
    held: HashSet<PathBuf>,
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
    objects: BTreeMap<ObjectKey, Kept>,
}

/// An object as the source keeps it between scans: trimmed to what DNS reads and serialized.
/// A few hundred bytes, where the parsed k8s-openapi structs take several KB (they were a
/// third of the heap at 5,000 Services); it is decoded again only when it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept(Box<str>);

impl Kept {
    fn new(object: &ClusterObject) -> Result<Kept, String> {
        snapshot::encode_object(&trim_keeping(object, Keep::Provenance))
            .map(Kept)
            .map_err(|e| format!("cannot keep {}: {e}", object.kind()))
    }

    /// The object again. Only fails if the JSON we wrote does not read back (a bug).
    fn object(&self, kind: ObjectKind) -> Option<ClusterObject> {
        let json = self.0.as_ref();
        let object = match kind {
            ObjectKind::Service => {
                serde_json::from_str(json).map(|o| ClusterObject::Service(Box::new(o)))
            }
            ObjectKind::EndpointSlice => {
                serde_json::from_str(json).map(|o| ClusterObject::EndpointSlice(Box::new(o)))
            }
            ObjectKind::Pod => serde_json::from_str(json).map(|o| ClusterObject::Pod(Box::new(o))),
            ObjectKind::Namespace => {
                serde_json::from_str(json).map(|o| ClusterObject::Namespace(Box::new(o)))
            }
        };
        object
            .inspect_err(|error| warn!(%error, "a kept manifest object does not read back"))
            .ok()
    }
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
            held: HashSet::new(),
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
        if watcher.is_ok() {
            info!(dir = %self.dir.display(), "watching the manifest directory");
        }
        if let Err(e) = &watcher {
            warn!(
                dir = %self.dir.display(),
                error = %e,
                "cannot watch the manifest directory; polling it every second instead"
            );
        }
        match watcher {
            // Its first rescan comes after the notifications of the first DEBOUNCE, so that a
            // file being written as the watch starts is seen as such.
            Ok(watcher) => self.run_watcher(watcher, rx, sink, cancel).await,
            Err(_) => {
                let this = self.rescan(&sink, ScanPlan::Full).await?;
                this.run_polling(sink, cancel).await
            }
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
        // Manifest files modified and not closed yet, with when that was first seen.
        let mut writing: HashMap<PathBuf, tokio::time::Instant> = HashMap::new();
        // The first rescan (of everything) catches what changed since the initial load.
        let mut first = true;
        loop {
            let mut dirty = HashSet::new();
            let mut full = std::mem::take(&mut first);
            let mut relevant = false;
            // When the oldest file still being written must be read anyway.
            let give_up = writing.values().min().map(|since| *since + WRITE_WAIT);
            if !full {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = safety.tick() => full = true,
                    _ = sleep_until_some(give_up) => relevant = true,
                    msg = rx.recv() => match msg {
                        Some(msg) => relevant = note_event(msg, &mut dirty, &mut full, &mut writing),
                        None => {
                            // The watcher's thread is gone; keep going the slow way.
                            warn!(dir = %self.dir.display(), "manifest watcher stopped; polling instead");
                            drop(watcher);
                            return self.run_polling(sink, cancel).await;
                        }
                    },
                }
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
                            note_event(msg, &mut dirty, &mut full, &mut writing);
                        }
                        None => break,
                    },
                }
            }
            let now = tokio::time::Instant::now();
            writing.retain(|path, since| {
                let waiting = now < *since + WRITE_WAIT;
                if !waiting {
                    debug!(path = %path.display(), "manifest file still open for writing; reading it anyway");
                    dirty.insert(path.clone());
                }
                waiting
            });
            self.held = writing.keys().cloned().collect();
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
        let mut changes: Vec<(PathBuf, Option<BTreeMap<ObjectKey, Kept>>)> = Vec::new();
        // Listed, but removed before they could be read.
        let mut vanished = HashSet::new();

        for (path, stat) in &listing.files {
            if self.held.contains(path) {
                // Being written: its previous objects stay until the writer is done, when it is
                // read again (its fingerprint is forgotten so that it is).
                debug!(path = %path.display(), "manifest file still open for writing; not read yet");
                report.files += 1;
                if let Some(state) = self.files.get_mut(path) {
                    state.stat = None;
                    report.failed_files += usize::from(state.failed);
                }
                continue;
            }
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
            // Kept trimmed to what DNS reads: the diff of the next change compares what
            // matters, and the memory is a fraction of the parsed objects'.
            let parsed = bytes
                .and_then(|b| parse_file(path, &b, &self.metrics))
                .and_then(|objects| {
                    objects
                        .into_iter()
                        .map(|(key, object)| Ok((key, Kept::new(&object)?)))
                        .collect::<Result<BTreeMap<_, _>, String>>()
                });
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
    fn effective(&self, key: &ObjectKey) -> Option<&Kept> {
        let path = self.owners.get(key)?.last()?;
        self.files.get(path)?.objects.get(key)
    }

    /// Makes `objects` the current objects of `path` (`None`: the file is gone), recording in
    /// `touched` what was in force before for every key involved.
    fn replace_file(
        &mut self,
        path: &Path,
        objects: Option<BTreeMap<ObjectKey, Kept>>,
        touched: &mut BTreeMap<ObjectKey, Option<Kept>>,
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
            .filter(|(k, o)| old.get(*k) != Some(*o))
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
            let paths = self.owners.entry(key.clone()).or_default();
            paths.retain(|p| p != path);
            if let Some(other) = paths.last() {
                warn!(
                    object = %key,
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
    ///
    /// Events go out in batches of [`EMIT_BATCH`]: the zone rebuilds each Service a batch
    /// touches once, and only one batch of objects is decoded at a time (decoding a whole
    /// 50,000-Service directory at once set the process's peak memory, and with it its RSS).
    fn emit(
        &self,
        touched: BTreeMap<ObjectKey, Option<Kept>>,
        sink: &dyn EventSink,
    ) -> (usize, usize) {
        let mut batch = Vec::with_capacity(EMIT_BATCH);
        let mut send = |event: SourceEvent| {
            batch.push(event);
            if batch.len() >= EMIT_BATCH {
                sink.handle_batch(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(EMIT_BATCH),
                ));
            }
        };
        let mut deletes = Vec::new();
        let mut applied = 0;
        for (key, before) in touched {
            match (before, self.effective(&key)) {
                (before, Some(after)) => {
                    if before.as_ref() != Some(after)
                        && let Some(mut object) = after.object(key.kind)
                    {
                        if let Some(file) = self.owners.get(&key).and_then(|paths| paths.last()) {
                            object.set_manifest_file(&file.to_string_lossy());
                        }
                        send(SourceEvent::Apply(object));
                        applied += 1;
                    }
                }
                (Some(_), None) => deletes.push(key),
                (None, None) => {}
            }
        }
        let deleted = deletes.len();
        for key in deletes {
            send(SourceEvent::Delete(key));
        }
        if !batch.is_empty() {
            sink.handle_batch(batch);
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

/// Records what a notification asks to rescan, and which manifest files are being written
/// (modified and not closed yet). Returns whether it may mean a change (our own reads show up
/// as "opened" events: those are ignored, or every scan would trigger another).
fn note_event(
    msg: notify::Result<notify::Event>,
    dirty: &mut HashSet<PathBuf>,
    full: &mut bool,
    writing: &mut HashMap<PathBuf, tokio::time::Instant>,
) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    match msg {
        Ok(event) => {
            if event.need_rescan() {
                *full = true;
                return true;
            }
            match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    for path in &event.paths {
                        writing.remove(path);
                    }
                }
                EventKind::Access(_) => return false,
                EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_))
                    if WATCHER_REPORTS_CLOSE =>
                {
                    let now = tokio::time::Instant::now();
                    for path in &event.paths {
                        let manifest = path
                            .file_name()
                            .is_some_and(|n| is_manifest_name(&n.to_string_lossy()));
                        if manifest {
                            writing.entry(path.clone()).or_insert(now);
                        }
                    }
                }
                // Renamed or removed: whatever is under the name now is complete.
                EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
                    for path in &event.paths {
                        writing.remove(path);
                    }
                }
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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

/// Parses one manifest file into its objects, keyed. Objects without a name are skipped
/// (warned and counted); any other problem rejects the whole file with the reason.
pub(crate) fn parse_file(
    path: &Path,
    bytes: &[u8],
    metrics: &Metrics,
) -> Result<BTreeMap<ObjectKey, ClusterObject>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8: {e}"))?;
    // Editors on Windows may start a file with a byte order mark; YAML and JSON parsers would
    // take it for part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every event, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<SourceEvent>>);

    impl EventSink for Recorder {
        fn handle(&self, event: SourceEvent) {
            self.0.lock().unwrap().push(event);
        }
        fn unlisted(
            &self,
            _: ObjectKind,
            _: Option<&str>,
            _: &dyn Fn(&str, &str) -> bool,
        ) -> Vec<ObjectKey> {
            unreachable!("the manifest source tracks its files' objects itself")
        }
    }

    impl Recorder {
        /// The events so far as text (`apply Service default/a`, `delete ...`, `synced`),
        /// in order, and forgets them.
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
                .into_iter()
                .map(|event| match event {
                    SourceEvent::Apply(object) => format!("apply {}", object.key().unwrap()),
                    SourceEvent::Delete(key) => format!("delete {key}"),
                    SourceEvent::InitialSyncDone => "synced".to_string(),
                })
                .collect()
        }

        /// The objects applied so far, forgetting every event.
        fn take_applied(&self) -> Vec<ClusterObject> {
            std::mem::take(&mut *self.0.lock().unwrap())
                .into_iter()
                .filter_map(|event| match event {
                    SourceEvent::Apply(object) => Some(object),
                    _ => None,
                })
                .collect()
        }

        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    fn svc(namespace: &str, name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
             spec:\n  clusterIP: {ip}\n  ports:\n  - name: http\n    port: 80\n"
        )
    }

    fn cluster_ip(object: impl std::borrow::Borrow<ClusterObject>) -> String {
        match object.borrow() {
            ClusterObject::Service(s) => s.spec.as_ref().unwrap().cluster_ip.clone().unwrap(),
            other => panic!("not a Service: {other:?}"),
        }
    }

    fn key(kind: ObjectKind, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// Parses `text` as if it were the file `name`, returning the keys found.
    fn parse(name: &str, text: &str) -> Result<Vec<String>, String> {
        let metrics = Metrics::new();
        parse_file(Path::new(name), text.as_bytes(), &metrics)
            .map(|objects| objects.keys().map(ToString::to_string).collect())
    }

    struct Fixture {
        dir: tempfile::TempDir,
        metrics: Arc<Metrics>,
        source: ManifestSource,
        sink: Recorder,
    }

    impl Fixture {
        fn new(files: &[(&str, &str)]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let metrics = Arc::new(Metrics::new());
            let source = ManifestSource::new(dir.path().to_path_buf(), metrics.clone());
            Fixture {
                dir,
                metrics,
                source,
                sink: Recorder::default(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.path(name), text).unwrap();
        }

        fn load(&mut self) -> LoadSummary {
            self.source.load_initial(&self.sink).unwrap()
        }

        /// A full rescan; the events it sent.
        fn rescan(&mut self) -> Vec<String> {
            self.source.scan_logged(&self.sink, &ScanPlan::Full);
            self.sink.take()
        }

        /// A rescan of what changed by metadata only (what polling does).
        fn rescan_changed(&mut self) -> Vec<String> {
            self.source
                .scan_logged(&self.sink, &ScanPlan::Changed(HashSet::new()));
            self.sink.take()
        }

        fn in_force(&self, key: &ObjectKey) -> Option<ClusterObject> {
            self.source.effective(key)?.object(key.kind)
        }

        fn errors(&self) -> u64 {
            self.metrics.manifest_errors.get()
        }
    }

    /// Runs `f` with every log line it emits captured, and returns them with its result.
    fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (result, logs)
    }

    // ---- parsing ----

    #[test]
    fn multi_document_yaml() {
        let text = format!(
            "# leading comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n\
             ---\n{}---\n{}\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: a-1\n\
             \x20 namespace: default\n  labels:\n    kubernetes.io/service-name: a\n\
             addressType: IPv4\nendpoints:\n- addresses: [192.0.2.9]\n  conditions: {{ready: true}}\n\
             ...\n",
            svc("default", "a", "192.0.2.1"),
            svc("other", "b", "192.0.2.2"),
        );
        assert_eq!(
            parse("x.yaml", &text).unwrap(),
            [
                "Service default/a",
                "Service other/b",
                "EndpointSlice default/a-1",
                "Namespace other",
            ]
        );
    }

    #[test]
    fn namespace_defaults_to_default() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  clusterIP: 192.0.2.1\n";
        assert_eq!(parse("x.yaml", text).unwrap(), ["Service default/a"]);
    }

    #[test]
    fn empty_documents_and_files() {
        for text in [
            "",
            "\n",
            "# only a comment\n",
            "---\n",
            "---\n---\n",
            "---\n# comment\n---\n...\n",
        ] {
            assert_eq!(
                parse("x.yaml", text).unwrap(),
                Vec::<String>::new(),
                "{text:?}"
            );
        }
        assert_eq!(parse("x.json", "").unwrap(), Vec::<String>::new());
        assert_eq!(parse("x.json", " \n").unwrap(), Vec::<String>::new());
        let text = format!("---\n---\n{}---\n\n---\n", svc("default", "a", "192.0.2.1"));
        assert_eq!(parse("x.yaml", &text).unwrap(), ["Service default/a"]);
    }

    #[test]
    fn byte_order_mark_and_crlf() {
        let text = format!("\u{feff}{}", svc("default", "a", "192.0.2.1")).replace('\n', "\r\n");
        assert_eq!(parse("x.yaml", &text).unwrap(), ["Service default/a"]);
        let json =
            "\u{feff}{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"a\"}}";
        assert_eq!(parse("x.json", json).unwrap(), ["Service default/a"]);
    }

    #[test]
    fn yaml_list() {
        let text = "\
apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: default}
  spec: {clusterIP: 192.0.2.1}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm, namespace: default}
  data: {key: value}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d, namespace: default}
  spec: {replicas: 3, template: {spec: {containers: [{name: c, image: x}]}}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: a-xyz
    namespace: default
    labels: {kubernetes.io/service-name: a}
  addressType: IPv4
  endpoints: []
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: default}
  spec:
    containers:
    - name: c
      image: x
      resources: {limits: {cpu: 1, memory: 128Mi}}
  status: {podIP: 192.0.2.20}
";
        assert_eq!(
            parse("x.yaml", text).unwrap(),
            [
                "Service default/a",
                "EndpointSlice default/a-xyz",
                "Pod default/p"
            ]
        );
        // Empty lists.
        for items in ["items: []", "items: null", "items:", ""] {
            let text = format!("apiVersion: v1\nkind: List\n{items}\n");
            assert_eq!(
                parse("x.yaml", &text).unwrap(),
                Vec::<String>::new(),
                "{items}"
            );
        }
    }

    #[test]
    fn json_list() {
        let text = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "metadata": {"resourceVersion": ""},
  "items": [
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "ext", "namespace": "default"},
     "spec": {"type": "ExternalName", "externalName": "www.example.org"}},
    {"apiVersion": "v1", "kind": "ConfigMap",
     "metadata": {"name": "cm", "namespace": "default"}, "data": {"a": "b"}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}
  ]
}"#;
        assert_eq!(
            parse("x.json", text).unwrap(),
            ["Service default/ext", "Namespace other"]
        );
        // A single JSON object.
        let one = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"n"}}"#;
        assert_eq!(parse("x.json", one).unwrap(), ["Service n/a"]);
    }

    #[test]
    fn typed_list_items_may_omit_their_kind() {
        let text = "\
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a, namespace: default}
  spec: {clusterIP: 192.0.2.1}
- metadata: {name: b, namespace: default}
";
        assert_eq!(
            parse("x.yaml", text).unwrap(),
            ["Service default/a", "Service default/b"]
        );
        // A list of a kind we do not serve is skipped whole.
        let text = "apiVersion: v1\nkind: ConfigMapList\nitems:\n- metadata: {name: a}\n";
        assert_eq!(parse("x.yaml", text).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn unknown_kinds_are_ignored() {
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  port: \"80\"\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  replicas: 1\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: a\nsubsets: []\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: i\n---\n\
             # Not the served API version: not a Service we understand.\n\
             apiVersion: v2\nkind: Service\nmetadata:\n  name: future\n---\n{}",
            svc("default", "a", "192.0.2.1")
        );
        assert_eq!(parse("x.yaml", &text).unwrap(), ["Service default/a"]);
        // Fields of an unknown kind are not type-checked against anything.
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [not, a, string]\n";
        assert_eq!(parse("x.yaml", text).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn realistic_kubectl_output() {
        let text = "\
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"web\"}}
    creationTimestamp: \"2024-05-01T10:00:00Z\"
    labels:
      app: web
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:labels:
            .: {}
            f:app: {}
        f:spec:
          f:ports:
            k:{\"port\":80,\"protocol\":\"TCP\"}:
              .: {}
              f:port: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: \"2024-05-01T10:00:00Z\"
    name: web
    namespace: default
    resourceVersion: \"12345\"
    uid: 0b9f1a52-3c1e-4f7e-9a57-1f2b3c4d5e6f
  spec:
    clusterIP: 192.0.2.60
    clusterIPs:
    - 192.0.2.60
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: http
    selector:
      app: web
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 192.0.2.61
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-1
    targetRef:
      kind: Pod
      name: web-5d4f8c7b9-abcde
      namespace: default
      uid: 1c2d3e4f-5a6b-7c8d-9e0f-a1b2c3d4e5f6
    zone: zone-a
  kind: EndpointSlice
  metadata:
    annotations:
      endpoints.kubernetes.io/last-change-trigger-time: \"2024-05-01T10:00:05Z\"
    creationTimestamp: \"2024-05-01T10:00:00Z\"
    generateName: web-
    generation: 3
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: default
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: web
      uid: 0b9f1a52-3c1e-4f7e-9a57-1f2b3c4d5e6f
    resourceVersion: \"12350\"
    uid: 2d3e4f5a-6b7c-8d9e-0f1a-b2c3d4e5f6a7
  ports:
  - name: http
    port: 8080
    protocol: TCP
    appProtocol: http
- apiVersion: v1
  kind: Pod
  metadata:
    creationTimestamp: \"2024-05-01T10:00:00Z\"
    name: web-5d4f8c7b9-abcde
    namespace: default
    resourceVersion: \"12349\"
    uid: 1c2d3e4f-5a6b-7c8d-9e0f-a1b2c3d4e5f6
  spec:
    containers:
    - image: nginx:1.27
      imagePullPolicy: IfNotPresent
      name: web
      ports:
      - containerPort: 8080
        name: http
        protocol: TCP
      resources:
        requests:
          cpu: 100m
          memory: 64Mi
      terminationMessagePath: /dev/termination-log
      terminationMessagePolicy: File
    dnsPolicy: ClusterFirst
    restartPolicy: Always
  status:
    conditions:
    - lastProbeTime: null
      lastTransitionTime: \"2024-05-01T10:00:03Z\"
      status: \"True\"
      type: Ready
    containerStatuses:
    - containerID: containerd://abc
      image: docker.io/library/nginx:1.27
      imageID: docker.io/library/nginx@sha256:abc
      lastState: {}
      name: web
      ready: true
      restartCount: 0
      started: true
      state:
        running:
          startedAt: \"2024-05-01T10:00:02Z\"
    hostIP: 198.51.100.200
    phase: Running
    podIP: 192.0.2.61
    podIPs:
    - ip: 192.0.2.61
    qosClass: Burstable
    startTime: \"2024-05-01T10:00:00Z\"
kind: List
metadata:
  resourceVersion: \"\"
";
        assert_eq!(
            parse("x.yaml", text).unwrap(),
            [
                "Service default/web",
                "EndpointSlice default/web-x7k2p",
                "Pod default/web-5d4f8c7b9-abcde"
            ]
        );
    }

    #[test]
    fn broken_documents_are_errors_with_a_line() {
        let good = svc("default", "a", "192.0.2.1");
        // Syntax error in the third document: the line is the file's, not the document's.
        let text = format!("{good}---\n{good}---\napiVersion: v1\nkind: Service\nmetadata: [\n");
        let error = parse("x.yaml", &text).unwrap_err();
        assert!(error.contains("document 3"), "{error}");
        assert!(error.contains("line 26"), "{error}");
        // Type error in a served kind.
        let text = format!(
            "{good}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\nspec:\n  ports:\n  - port: eighty\n"
        );
        let error = parse("x.yaml", &text).unwrap_err();
        assert!(error.contains("document 2"), "{error}");
        assert!(error.contains("line 18"), "{error}");
        // Missing apiVersion / kind, or not a mapping.
        let error = parse("x.yaml", "kind: Service\nmetadata:\n  name: a\n").unwrap_err();
        assert!(error.contains("apiVersion and kind"), "{error}");
        let error = parse("x.yaml", "- a\n- b\n").unwrap_err();
        assert!(error.contains("not a Kubernetes object"), "{error}");
        let error = parse("x.yaml", "apiVersion: v1\nkind: List\nitems:\n- 3\n").unwrap_err();
        assert!(error.contains("item 0"), "{error}");
        let error = parse("x.yaml", "apiVersion: v1\nkind: List\nitems: {}\n").unwrap_err();
        assert!(error.contains("items is not a list"), "{error}");
        // JSON errors carry a line too.
        let error = parse("x.json", "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \n}").unwrap_err();
        assert!(error.contains("line 4"), "{error}");
        let error = parse(
            "x.json",
            "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\n\"metadata\":{\"name\":7}}",
        )
        .unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        // Invalid UTF-8.
        let metrics = Metrics::new();
        let error = parse_file(Path::new("x.yaml"), b"kind: \xff\n", &metrics).unwrap_err();
        assert!(error.contains("UTF-8"), "{error}");
    }

    #[test]
    fn objects_without_a_name_are_skipped_and_counted() {
        let metrics = Metrics::new();
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: default\n---\n{}",
            svc("default", "a", "192.0.2.1")
        );
        let objects = parse_file(Path::new("x.yaml"), text.as_bytes(), &metrics).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(
            metrics
                .objects_rejected
                .with_label_values(&["Service", "no_name"])
                .get(),
            1
        );
    }

    #[test]
    fn duplicate_object_in_one_file_last_wins() {
        let metrics = Metrics::new();
        let text = format!(
            "{}---\n{}",
            svc("default", "a", "192.0.2.1"),
            svc("default", "a", "192.0.2.2")
        );
        let objects = parse_file(Path::new("x.yaml"), text.as_bytes(), &metrics).unwrap();
        let only: Vec<_> = objects.values().map(cluster_ip).collect();
        assert_eq!(only, ["192.0.2.2"]);
    }

    #[test]
    fn manifest_names() {
        for name in ["a.yaml", "a.yml", "a.json", "A.YAML", "a.b.yaml"] {
            assert!(is_manifest_name(name), "{name}");
        }
        for name in [
            "README.md",
            "a.yaml.swp",
            ".a.yaml.swp",
            ".a.yaml",
            ".yaml",
            "a.yaml~",
            "#a.yaml#",
            "a.yaml.tmp",
            "a.txt",
            "yaml",
            "a.yaml.bak",
        ] {
            assert!(!is_manifest_name(name), "{name}");
        }
    }

    // ---- the directory ----

    #[test]
    fn load_reads_only_manifest_files() {
        let good = svc("default", "a", "192.0.2.1");
        let mut f = Fixture::new(&[
            ("a.yaml", &good),
            ("README.md", "# not a manifest: {{{"),
            ("b.yaml.swp", "\0\0binary"),
            (".b.yaml.swp", "\0\0binary"),
            (".hidden.yaml", &svc("default", "hidden", "192.0.2.9")),
            ("c.yaml~", &svc("default", "backup", "192.0.2.9")),
            ("notes.txt", "x: ["),
        ]);
        std::fs::create_dir(f.path(".git")).unwrap();
        f.write(".git/x.yaml", &svc("default", "git", "192.0.2.9"));
        std::fs::create_dir(f.path("sub")).unwrap();
        f.write("sub/b.yml", &svc("other", "b", "192.0.2.2"));
        let summary = f.load();
        assert_eq!(
            summary,
            LoadSummary {
                files: 2,
                objects: 2,
                failed_files: 0
            }
        );
        assert_eq!(
            f.sink.take(),
            ["apply Service default/a", "apply Service other/b", "synced"]
        );
        assert_eq!(f.errors(), 0);
    }

    #[test]
    fn load_initial_on_a_missing_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let mut source = ManifestSource::new(missing.clone(), Arc::new(Metrics::new()));
        let sink = Recorder::default();
        match source.load_initial(&sink) {
            Err(ManifestError::ReadDir { path, .. }) => assert!(path.ends_with("nope")),
            other => panic!("expected ReadDir, got {other:?}"),
        }
        assert_eq!(
            sink.len(),
            0,
            "no InitialSyncDone for a directory never read"
        );
        // A file where the directory should be fails the same way.
        std::fs::write(&missing, "x").unwrap();
        let mut source = ManifestSource::new(missing, Arc::new(Metrics::new()));
        assert!(source.load_initial(&sink).is_err());
    }

    #[test]
    fn broken_file_is_reported_counted_and_skipped() {
        let mut f = Fixture::new(&[
            ("good.yaml", &svc("default", "a", "192.0.2.1")),
            (
                "bad.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  bad: [\n",
            ),
        ]);
        let (summary, logs) = capture_logs(|| f.load());
        assert_eq!(
            summary,
            LoadSummary {
                files: 2,
                objects: 1,
                failed_files: 1
            }
        );
        assert_eq!(f.sink.take(), ["apply Service default/a", "synced"]);
        assert_eq!(f.errors(), 1);
        let line = logs
            .lines()
            .find(|l| l.contains("rejected manifest file"))
            .unwrap_or_else(|| panic!("no rejection logged:\n{logs}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(
            line.contains(&f.path("bad.yaml").display().to_string()),
            "{line}"
        );
        assert!(line.contains("line 6"), "{line}");
        // Not reported again while it does not change.
        assert_eq!(f.rescan(), Vec::<String>::new());
        assert_eq!(f.rescan_changed(), Vec::<String>::new());
        assert_eq!(f.errors(), 1);
    }

    #[test]
    fn edit_emits_only_what_changed() {
        let a = svc("default", "a", "192.0.2.1");
        let b = svc("default", "b", "192.0.2.2");
        let c = svc("default", "c", "192.0.2.3");
        let mut f = Fixture::new(&[
            ("one.yaml", &format!("{a}---\n{b}---\n{c}")),
            ("two.yaml", &svc("other", "x", "192.0.2.9")),
        ]);
        f.load();
        f.sink.take();
        // b changes, c goes, d appears, a stays as it is (reordered and re-commented).
        let b2 = svc("default", "b", "192.0.2.22");
        let d = svc("default", "d", "192.0.2.4");
        f.write("one.yaml", &format!("# edited\n{b2}---\n{d}---\n{a}"));
        assert_eq!(
            f.rescan(),
            [
                "apply Service default/b",
                "apply Service default/d",
                "delete Service default/c"
            ]
        );
        assert_eq!(
            cluster_ip(
                f.in_force(&key(ObjectKind::Service, "default", "b"))
                    .unwrap()
            ),
            "192.0.2.22"
        );
        // Rewriting the same objects in another format sends nothing.
        f.write("one.yaml", &format!("{a}---\n{d}---\n{b2}\n\n"));
        assert_eq!(f.rescan(), Vec::<String>::new());
        // Touching a file sends nothing either.
        let bytes = std::fs::read(f.path("one.yaml")).unwrap();
        f.write("one.yaml", std::str::from_utf8(&bytes).unwrap());
        assert_eq!(f.rescan(), Vec::<String>::new());
    }

    #[test]
    fn removing_a_file_deletes_its_objects() {
        let mut f = Fixture::new(&[
            (
                "one.yaml",
                &format!(
                    "{}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n",
                    svc("default", "a", "192.0.2.1")
                ),
            ),
            ("two.yaml", &svc("default", "b", "192.0.2.2")),
        ]);
        f.load();
        f.sink.take();
        std::fs::remove_file(f.path("one.yaml")).unwrap();
        assert_eq!(
            f.rescan_changed(),
            ["delete Service default/a", "delete Namespace other"]
        );
        assert_eq!(f.source.owners.len(), 1);
        // Adding it back applies again.
        f.write("one.yaml", &svc("default", "a", "192.0.2.1"));
        assert_eq!(f.rescan_changed(), ["apply Service default/a"]);
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_version() {
        let a = svc("default", "a", "192.0.2.1");
        let b = svc("default", "b", "192.0.2.2");
        let mut f = Fixture::new(&[
            ("one.yaml", &format!("{a}---\n{b}")),
            ("two.yaml", &svc("default", "c", "192.0.2.3")),
        ]);
        f.load();
        f.sink.take();
        // Broken: nothing changes, the error is counted once.
        f.write("one.yaml", &format!("{a}---\nkind: [\n"));
        assert_eq!(f.rescan(), Vec::<String>::new());
        assert_eq!(f.errors(), 1);
        assert!(
            f.in_force(&key(ObjectKind::Service, "default", "b"))
                .is_some()
        );
        // Another broken version counts again.
        f.write("one.yaml", "apiVersion: v1\nkind: Service\nmetadata: 3\n");
        assert_eq!(f.rescan(), Vec::<String>::new());
        assert_eq!(f.errors(), 2);
        // Fixed, with a change: the diff is against the last good version.
        f.write(
            "one.yaml",
            &format!("{a}---\n{}", svc("default", "b", "192.0.2.22")),
        );
        assert_eq!(f.rescan(), ["apply Service default/b"]);
        assert_eq!(f.errors(), 2);
        // Broken again, then removed: the last good objects go with it.
        f.write("one.yaml", "{{{{");
        assert_eq!(f.rescan(), Vec::<String>::new());
        std::fs::remove_file(f.path("one.yaml")).unwrap();
        assert_eq!(
            f.rescan(),
            ["delete Service default/a", "delete Service default/b"]
        );
    }

    #[test]
    fn an_object_in_two_files() {
        let mut f = Fixture::new(&[
            ("a.yaml", &svc("default", "dup", "192.0.2.1")),
            ("b.yaml", &svc("default", "dup", "192.0.2.2")),
            ("c.yaml", &svc("default", "same", "192.0.2.5")),
            ("d.yaml", &svc("default", "same", "192.0.2.5")),
        ]);
        let (summary, logs) = capture_logs(|| f.load());
        assert_eq!(summary.objects, 2);
        // One Apply per object, the later file (in path order) winning.
        assert_eq!(
            f.sink
                .take_applied()
                .iter()
                .map(cluster_ip)
                .collect::<Vec<_>>(),
            ["192.0.2.2", "192.0.2.5"]
        );
        assert!(
            logs.contains("object defined in two manifest files") && logs.contains("default/dup"),
            "{logs}"
        );
        let dup = key(ObjectKind::Service, "default", "dup");
        // Removing the definition in force brings back the other one: no Delete.
        std::fs::remove_file(f.path("b.yaml")).unwrap();
        assert_eq!(f.rescan(), ["apply Service default/dup"]);
        assert_eq!(cluster_ip(f.in_force(&dup).unwrap()), "192.0.2.1");
        // Identical definitions: removing one changes nothing.
        std::fs::remove_file(f.path("c.yaml")).unwrap();
        assert_eq!(f.rescan(), Vec::<String>::new());
        // Put b back, then edit a: the most recent change wins.
        f.write("b.yaml", &svc("default", "dup", "192.0.2.2"));
        assert_eq!(f.rescan(), ["apply Service default/dup"]);
        assert_eq!(cluster_ip(f.in_force(&dup).unwrap()), "192.0.2.2");
        f.write("a.yaml", &svc("default", "dup", "192.0.2.3"));
        assert_eq!(f.rescan(), ["apply Service default/dup"]);
        assert_eq!(cluster_ip(f.in_force(&dup).unwrap()), "192.0.2.3");
        // Dropping it from the file in force (the file stays): the other definition is back.
        f.write("a.yaml", "");
        assert_eq!(f.rescan(), ["apply Service default/dup"]);
        assert_eq!(cluster_ip(f.in_force(&dup).unwrap()), "192.0.2.2");
        // Deleting the not-in-force file sends nothing; deleting the last one deletes it.
        f.write("a.yaml", &svc("default", "dup", "192.0.2.2"));
        assert_eq!(f.rescan(), Vec::<String>::new());
        std::fs::remove_file(f.path("a.yaml")).unwrap();
        assert_eq!(f.rescan(), Vec::<String>::new());
        std::fs::remove_file(f.path("b.yaml")).unwrap();
        assert_eq!(f.rescan(), ["delete Service default/dup"]);
        assert!(f.in_force(&dup).is_none());
        assert!(!f.source.owners.contains_key(&dup));
    }

    #[test]
    fn an_object_moved_between_files_in_one_scan() {
        let mut f = Fixture::new(&[
            ("a.yaml", &svc("default", "m", "192.0.2.1")),
            ("b.yaml", ""),
        ]);
        f.load();
        f.sink.take();
        f.write("a.yaml", "");
        f.write("b.yaml", &svc("default", "m", "192.0.2.1"));
        assert_eq!(f.rescan(), Vec::<String>::new(), "no delete, no apply");
        std::fs::rename(f.path("b.yaml"), f.path("c.yaml")).unwrap();
        assert_eq!(f.rescan_changed(), Vec::<String>::new(), "renamed file");
    }

    #[test]
    fn changed_scan_sees_renames_and_quick_rewrites() {
        let mut f = Fixture::new(&[("a.yaml", &svc("default", "a", "192.0.2.1"))]);
        f.load();
        f.sink.take();
        // Same length, written at once after the load: the racy-stat rule re-reads it.
        f.write("a.yaml", &svc("default", "a", "192.0.2.7"));
        assert_eq!(f.rescan_changed(), ["apply Service default/a"]);
        // Written elsewhere and renamed over it (editors, kubectl-like tools).
        let tmp = f.path(".a.yaml.tmp");
        std::fs::write(&tmp, svc("default", "a", "192.0.2.8")).unwrap();
        std::fs::rename(&tmp, f.path("a.yaml")).unwrap();
        assert_eq!(f.rescan_changed(), ["apply Service default/a"]);
        assert_eq!(
            cluster_ip(
                f.in_force(&key(ObjectKind::Service, "default", "a"))
                    .unwrap()
            ),
            "192.0.2.8"
        );
    }

    /// The layout of a ConfigMap volume: `<key>` -> `..data/<key>`, `..data` ->
    /// `..<timestamp>`, updated by swapping the `..data` symlink.
    #[cfg(unix)]
    #[test]
    fn configmap_volume_layout() {
        use std::os::unix::fs::symlink;
        let mut f = Fixture::new(&[]);
        let root = f.dir.path().to_path_buf();
        std::fs::create_dir(root.join("..2024_01_01_00_00_00.1")).unwrap();
        std::fs::write(
            root.join("..2024_01_01_00_00_00.1/svc.yaml"),
            svc("default", "a", "192.0.2.1"),
        )
        .unwrap();
        symlink("..2024_01_01_00_00_00.1", root.join("..data")).unwrap();
        symlink("..data/svc.yaml", root.join("svc.yaml")).unwrap();
        assert_eq!(
            f.load().files,
            1,
            "the timestamped directory is not read twice"
        );
        assert_eq!(f.sink.take(), ["apply Service default/a", "synced"]);
        // The update: new directory, new symlink renamed over ..data, old directory removed.
        std::fs::create_dir(root.join("..2024_01_01_00_01_00.2")).unwrap();
        std::fs::write(
            root.join("..2024_01_01_00_01_00.2/svc.yaml"),
            svc("default", "a", "192.0.2.2"),
        )
        .unwrap();
        symlink("..2024_01_01_00_01_00.2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join("..2024_01_01_00_00_00.1")).unwrap();
        assert_eq!(f.rescan_changed(), ["apply Service default/a"]);
        assert_eq!(
            cluster_ip(
                f.in_force(&key(ObjectKind::Service, "default", "a"))
                    .unwrap()
            ),
            "192.0.2.2"
        );
    }

    #[test]
    fn an_unreadable_directory_keeps_the_objects() {
        let mut f = Fixture::new(&[("a.yaml", &svc("default", "a", "192.0.2.1"))]);
        f.load();
        f.sink.take();
        let moved = f.dir.path().with_extension("moved");
        std::fs::rename(f.dir.path(), &moved).unwrap();
        assert_eq!(f.rescan(), Vec::<String>::new());
        assert!(f.source.dir_unreadable);
        std::fs::rename(&moved, f.dir.path()).unwrap();
        assert_eq!(f.rescan(), Vec::<String>::new());
        assert!(!f.source.dir_unreadable);
    }

    /// Records the size of every batch and its events' kinds.
    #[derive(Default)]
    struct Batches(Mutex<Vec<(usize, usize)>>);

    impl EventSink for Batches {
        fn handle(&self, event: SourceEvent) {
            self.handle_batch(vec![event]);
        }
        fn unlisted(
            &self,
            _: ObjectKind,
            _: Option<&str>,
            _: &dyn Fn(&str, &str) -> bool,
        ) -> Vec<ObjectKey> {
            unreachable!("the manifest source tracks its files' objects itself")
        }
        fn handle_batch(&self, events: Vec<SourceEvent>) {
            let deletes = events
                .iter()
                .filter(|e| matches!(e, SourceEvent::Delete(_)))
                .count();
            self.0
                .lock()
                .unwrap()
                .push((events.len() - deletes, deletes));
        }
    }

    #[test]
    fn a_large_directory_goes_to_the_zone_in_batches_applies_first() {
        let services: String = (0..1200)
            .map(|i| {
                svc(
                    "default",
                    &format!("s{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250),
                )
            })
            .collect::<Vec<_>>()
            .join("---\n");
        let mut fx = Fixture::new(&[("a.yaml", &services)]);
        let sink = Batches::default();
        fx.source.load_initial(&sink).unwrap();
        // Three batches of applies (at most EMIT_BATCH each), then InitialSyncDone alone.
        assert_eq!(
            *sink.0.lock().unwrap(),
            [(500, 0), (500, 0), (200, 0), (1, 0)]
        );
        sink.0.lock().unwrap().clear();
        // 700 move to another file unchanged (no event), 500 are gone, one changes: the
        // apply goes before the deletes, and batches stay within EMIT_BATCH.
        let moved: String = (500..1200)
            .map(|i| {
                let ip = if i == 1199 {
                    "10.9.9.9".to_string()
                } else {
                    format!("10.0.{}.{}", i / 250, i % 250)
                };
                svc("default", &format!("s{i}"), &ip)
            })
            .collect::<Vec<_>>()
            .join("---\n");
        fx.write("b.yaml", &moved);
        std::fs::remove_file(fx.path("a.yaml")).unwrap();
        fx.source.scan_logged(&sink, &ScanPlan::Full);
        assert_eq!(*sink.0.lock().unwrap(), [(1, 499), (0, 1)]);
    }

    // ---- the watch ----

    /// Waits up to `within` for `check` to hold over the events received so far.
    async fn wait_for(
        sink: &Recorder,
        within: Duration,
        check: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            seen.extend(sink.take());
            if check(&seen) || tokio::time::Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a watch on a directory holding `files`, after the initial load.
    async fn start_watch(
        files: &[(&str, String)],
    ) -> (tempfile::TempDir, Arc<Recorder>, CancellationToken) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut source = ManifestSource::new(dir.path().to_path_buf(), Arc::new(Metrics::new()));
        let sink = Arc::new(Recorder::default());
        source.load_initial(sink.as_ref()).unwrap();
        sink.take();
        let cancel = CancellationToken::new();
        tokio::spawn(source.watch(sink.clone(), cancel.clone()));
        // Let the watch start (its first rescan finds nothing new).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sink.take(), Vec::<String>::new());
        (dir, sink, cancel)
    }

    /// `kubectl get ... -o yaml > file`: the shell truncates the file, kubectl writes it a
    /// while later. The objects of the file must not vanish meanwhile.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_being_written_keeps_its_objects_until_closed() {
        use std::io::Write as _;
        let two = format!(
            "{}---\n{}",
            svc("default", "a", "192.0.2.1"),
            svc("default", "b", "192.0.2.2")
        );
        let (dir, sink, cancel) = start_watch(&[("a.yaml", two)]).await;
        let path = dir.path().join("a.yaml");

        let mut file = std::fs::File::create(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            sink.take(),
            Vec::<String>::new(),
            "read while being written"
        );
        // Written in two parts, the first a valid prefix on its own.
        file.write_all(svc("default", "a", "192.0.2.9").as_bytes())
            .unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            sink.take(),
            Vec::<String>::new(),
            "read while being written"
        );
        file.write_all(format!("---\n{}", svc("default", "b", "192.0.2.2")).as_bytes())
            .unwrap();
        drop(file);
        let seen = wait_for(&sink, Duration::from_secs(1), |seen| !seen.is_empty()).await;
        assert_eq!(seen, ["apply Service default/a"]);

        // Emptied on purpose (opened, truncated, closed): its objects go at once.
        drop(std::fs::File::create(&path).unwrap());
        let seen = wait_for(&sink, Duration::from_secs(1), |seen| seen.len() >= 2).await;
        assert_eq!(
            seen,
            ["delete Service default/a", "delete Service default/b"]
        );
        cancel.cancel();
    }

    /// A writer that never closes the file does not hold it forever.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_left_open_is_read_after_a_while() {
        use std::io::Write as _;
        let (dir, sink, cancel) =
            start_watch(&[("a.yaml", svc("default", "a", "192.0.2.1"))]).await;
        let mut file = std::fs::File::create(dir.path().join("a.yaml")).unwrap();
        file.write_all(svc("default", "a", "192.0.2.5").as_bytes())
            .unwrap();
        file.flush().unwrap();
        tokio::time::sleep(WRITE_WAIT - Duration::from_millis(500)).await;
        assert_eq!(
            sink.take(),
            Vec::<String>::new(),
            "read while being written"
        );
        let seen = wait_for(&sink, Duration::from_secs(2), |seen| !seen.is_empty()).await;
        assert_eq!(seen, ["apply Service default/a"]);
        drop(file);
        cancel.cancel();
    }

    /// The fallback when the directory cannot be watched: a rescan every second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn polling_applies_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), svc("default", "a", "192.0.2.1")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), svc("default", "b", "192.0.2.2")).unwrap();
        let mut source = ManifestSource::new(dir.path().to_path_buf(), Arc::new(Metrics::new()));
        let sink = Arc::new(Recorder::default());
        source.load_initial(sink.as_ref()).unwrap();
        sink.take();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(source.run_polling(sink.clone(), cancel.clone()));
        let within = POLL_INTERVAL * 3;

        // In place (same length), by rename, and removed: all in one poll or several.
        std::fs::write(dir.path().join("a.yaml"), svc("default", "a", "192.0.2.7")).unwrap();
        let tmp = dir.path().join("b.yaml.tmp");
        std::fs::write(&tmp, svc("default", "c", "192.0.2.3")).unwrap();
        std::fs::rename(&tmp, dir.path().join("b.yaml")).unwrap();
        let mut seen = wait_for(&sink, within, |seen| seen.len() >= 3).await;
        seen.sort();
        assert_eq!(
            seen,
            [
                "apply Service default/a",
                "apply Service default/c",
                "delete Service default/b"
            ]
        );
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let seen = wait_for(&sink, within, |seen| !seen.is_empty()).await;
        assert_eq!(seen, ["delete Service default/a"]);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("polling stops when cancelled")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_applies_changes_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), svc("default", "a", "192.0.2.1")).unwrap();
        let mut source = ManifestSource::new(dir.path().to_path_buf(), Arc::new(Metrics::new()));
        let sink = Arc::new(Recorder::default());
        source.load_initial(sink.as_ref()).unwrap();
        sink.take();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(source.watch(sink.clone(), cancel.clone()));
        // Let the watch start (its first rescan finds nothing new).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sink.take(), Vec::<String>::new());

        let within = Duration::from_secs(1);
        let want = |w: &'static str| move |seen: &[String]| seen.iter().any(|s| s == w);
        std::fs::write(dir.path().join("b.yaml"), svc("default", "b", "192.0.2.2")).unwrap();
        let seen = wait_for(&sink, within, want("apply Service default/b")).await;
        assert_eq!(seen, ["apply Service default/b"]);

        let tmp = dir.path().join("a.yaml.tmp");
        std::fs::write(&tmp, svc("default", "a", "192.0.2.9")).unwrap();
        std::fs::rename(&tmp, dir.path().join("a.yaml")).unwrap();
        let seen = wait_for(&sink, within, want("apply Service default/a")).await;
        assert_eq!(seen, ["apply Service default/a"]);

        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        let seen = wait_for(&sink, within, want("delete Service default/b")).await;
        assert_eq!(seen, ["delete Service default/b"]);

        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/c.json"),
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"c"}}"#,
        )
        .unwrap();
        let seen = wait_for(&sink, within, want("apply Namespace c")).await;
        assert_eq!(seen, ["apply Namespace c"]);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watch stops when cancelled")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn objects_are_kept_trimmed_and_a_change_dns_does_not_read_is_not_passed_on() {
        let with_labels = |app: &str| {
            format!(
                "{}metadata:\n  name: a\n  namespace: default\n  resourceVersion: \"7\"\n  \
                 labels: {{app: {app}}}\n  annotations: {{big: x}}\n",
                "apiVersion: v1\nkind: Service\nspec:\n  clusterIP: 10.0.0.1\n"
            )
        };
        let mut f = Fixture::new(&[("a.yaml", &with_labels("one"))]);
        f.load();
        assert_eq!(f.sink.take(), ["apply Service default/a", "synced"]);
        let ClusterObject::Service(kept) = f
            .in_force(&key(ObjectKind::Service, "default", "a"))
            .expect("kept")
        else {
            panic!("not a Service");
        };
        assert_eq!(
            kept.metadata.labels, None,
            "labels DNS does not read are dropped"
        );
        assert_eq!(kept.metadata.annotations, None);
        assert_eq!(kept.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(
            kept.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("10.0.0.1")
        );
        // A label edit changes nothing DNS answers: no event.
        f.write("a.yaml", &with_labels("two"));
        assert_eq!(f.rescan(), Vec::<String>::new());
    }
}

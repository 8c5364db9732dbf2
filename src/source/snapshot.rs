//! The last-good snapshot of the Kubernetes API source: the objects the zone was built from,
//! trimmed to what DNS needs, in a file that survives restarts.
//!
//! Owns: the file format, trimming objects before they are kept for it, writing it atomically
//! (a temporary file in the same directory, fsync, rename) and reading it back with every
//! check that keeps a damaged file from being served.
//!
//! Must not touch: the zone, the API, timing. [`crate::source::kubernetes`] decides when to
//! write and when a snapshot is served.
//!
//! Format: one header line, then the body:
//!
//! ```text
//! clusterdns-snapshot 1 <body length in bytes> <FNV-1a 64 of the body, 16 hex digits> <unix seconds>\n
//! {"apiVersion":"v1","kind":"List","items":[<object>,...]}
//! ```
//!
//! The body is a Kubernetes `List` (so `kubectl` and the manifest source can read it too). A
//! truncated file fails the length check, a changed byte the checksum, an item of an unknown
//! kind or shape the parse: in each case the whole snapshot is rejected, never partly served.

use crate::source::ClusterObject;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const MAGIC: &str = "clusterdns-snapshot";
const VERSION: u32 = 1;
// The label that ties an EndpointSlice to its Service is the only label DNS needs.
use crate::zone::records::{LAST_CHANGE_TRIGGER_TIME, SERVICE_NAME_LABEL};

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The snapshot file (or its temporary file).
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a complete, intact snapshot.
    #[error("{}: corrupt snapshot: {reason}", path.display())]
    Corrupt {
        /// The snapshot file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
}

/// A snapshot read back.
#[derive(Debug)]
pub struct Snapshot {
    /// The objects, in the order they were written.
    pub objects: Vec<ClusterObject>,
    /// When it was written.
    pub written: SystemTime,
}

/// FNV-1a, 64 bits: enough to notice a damaged file (not an adversary).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What a trimmed object keeps besides what the zone reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing more (the snapshot file: small, and written often).
    Minimal,
    /// Also `resourceVersion` and the EndpointSlice controller's last-change-trigger-time
    /// annotation (what metrics and explanations of a live object use).
    Provenance,
}

fn trim_meta(meta: &ObjectMeta, keep_service_label: bool, keep: Keep) -> ObjectMeta {
    let provenance = keep == Keep::Provenance;
    let annotations = provenance
        .then(|| {
            meta.annotations.as_ref().and_then(|annotations| {
                let value = annotations.get(LAST_CHANGE_TRIGGER_TIME)?;
                Some([(LAST_CHANGE_TRIGGER_TIME.to_string(), value.clone())].into())
            })
        })
        .flatten();
    let labels = keep_service_label
        .then(|| {
            meta.labels.as_ref().and_then(|labels| {
                let value = labels.get(SERVICE_NAME_LABEL)?;
                Some([(SERVICE_NAME_LABEL.to_string(), value.clone())].into())
            })
        })
        .flatten();
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        labels,
        annotations,
        resource_version: meta.resource_version.clone().filter(|_| provenance),
        ..ObjectMeta::default()
    }
}

/// The object reduced to what the zone reads: names, the Service spec, the EndpointSlice's
/// service label, addresses, conditions, hostnames and ports, the Pod's IPs.
pub fn trim(object: &ClusterObject) -> ClusterObject {
    trim_keeping(object, Keep::Minimal)
}

/// [`trim`], keeping what `keep` says too.
pub fn trim_keeping(object: &ClusterObject, keep: Keep) -> ClusterObject {
    match object {
        ClusterObject::Service(s) => ClusterObject::Service(Box::new(Service {
            metadata: trim_meta(&s.metadata, false, keep),
            spec: s.spec.clone(),
            status: None,
        })),
        ClusterObject::EndpointSlice(s) => {
            let mut slice = EndpointSlice {
                metadata: trim_meta(&s.metadata, true, keep),
                ..(**s).clone()
            };
            for endpoint in &mut slice.endpoints {
                endpoint.target_ref = None;
                endpoint.deprecated_topology = None;
                endpoint.hints = None;
            }
            ClusterObject::EndpointSlice(Box::new(slice))
        }
        ClusterObject::Pod(p) => ClusterObject::Pod(Box::new(Pod {
            metadata: trim_meta(&p.metadata, false, keep),
            spec: None,
            status: p.status.as_ref().map(|s| PodStatus {
                pod_ip: s.pod_ip.clone(),
                pod_ips: s.pod_ips.clone(),
                phase: s.phase.clone(),
                ..PodStatus::default()
            }),
        })),
        ClusterObject::Namespace(n) => ClusterObject::Namespace(Box::new(Namespace {
            metadata: trim_meta(&n.metadata, false, keep),
            ..Namespace::default()
        })),
    }
}

/// One object as a JSON list item (with `apiVersion` and `kind`).
pub fn encode_object(object: &ClusterObject) -> Result<Box<str>, serde_json::Error> {
    let json = match object {
        ClusterObject::Service(o) => serde_json::to_string(o),
        ClusterObject::EndpointSlice(o) => serde_json::to_string(o),
        ClusterObject::Pod(o) => serde_json::to_string(o),
        ClusterObject::Namespace(o) => serde_json::to_string(o),
    }?;
    Ok(json.into_boxed_str())
}

/// Builds a snapshot file item by item, so that only one copy of the body is ever in memory.
#[derive(Debug)]
pub struct Builder {
    body: Vec<u8>,
    items: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            body: Vec::from(&br#"{"apiVersion":"v1","kind":"List","items":["#[..]),
            items: 0,
        }
    }
}

impl Builder {
    /// Appends one item from [`encode_object`].
    pub fn push(&mut self, item: &str) {
        if self.items > 0 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(item.as_bytes());
        self.items += 1;
    }

    /// Objects so far.
    pub fn len(&self) -> usize {
        self.items
    }

    /// No object yet.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The header line and the body, written at `now`.
    pub fn finish(mut self, now: SystemTime) -> (Vec<u8>, Vec<u8>) {
        self.body.extend_from_slice(b"]}\n");
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = format!(
            "{MAGIC} {VERSION} {} {:016x} {secs}\n",
            self.body.len(),
            fnv1a(&self.body)
        )
        .into_bytes();
        (header, self.body)
    }
}

/// The whole file for `items` (each from [`encode_object`]), written at `now`.
pub fn encode<'a>(items: impl IntoIterator<Item = &'a str>, now: SystemTime) -> Vec<u8> {
    let mut builder = Builder::default();
    for item in items {
        builder.push(item);
    }
    let (mut header, body) = builder.finish(now);
    header.extend_from_slice(&body);
    header
}

/// Parses and checks a whole snapshot file's content.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".to_string()))?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| corrupt("header is not text".to_string()))?;
    let body = &bytes[newline + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, len, sum, secs] = fields.as_slice() else {
        return Err(corrupt(format!("bad header {header:?}")));
    };
    if *magic != MAGIC {
        return Err(corrupt("not a clusterdns snapshot".to_string()));
    }
    if version.parse::<u32>().ok() != Some(VERSION) {
        return Err(corrupt(format!("unsupported version {version}")));
    }
    let len: usize = len
        .parse()
        .map_err(|_| corrupt(format!("bad length {len:?}")))?;
    if body.len() != len {
        return Err(corrupt(format!(
            "truncated or extended: header says {len} bytes, {} follow",
            body.len()
        )));
    }
    let sum = u64::from_str_radix(sum, 16).map_err(|_| corrupt(format!("bad checksum {sum:?}")))?;
    if fnv1a(body) != sum {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    let secs: u64 = secs
        .parse()
        .map_err(|_| corrupt(format!("bad time {secs:?}")))?;
    let written = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);

    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<serde_json::Value>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| corrupt(format!("body: {e}")))?;
    let mut objects = Vec::with_capacity(list.items.len());
    for (i, item) in list.items.into_iter().enumerate() {
        let kind = item
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let bad = |e: serde_json::Error| corrupt(format!("item {i} ({kind}): {e}"));
        let object = match kind.as_str() {
            "Service" => {
                ClusterObject::Service(Box::new(serde_json::from_value(item).map_err(bad)?))
            }
            "EndpointSlice" => {
                ClusterObject::EndpointSlice(Box::new(serde_json::from_value(item).map_err(bad)?))
            }
            "Pod" => ClusterObject::Pod(Box::new(serde_json::from_value(item).map_err(bad)?)),
            "Namespace" => {
                ClusterObject::Namespace(Box::new(serde_json::from_value(item).map_err(bad)?))
            }
            other => return Err(corrupt(format!("item {i}: unexpected kind {other:?}"))),
        };
        objects.push(object);
    }
    Ok(Snapshot { objects, written })
}

/// Reads and checks the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to disk, renamed
/// over it. A crash leaves either the old snapshot or the new one, never half of one.
pub fn write_atomic(path: &Path, parts: &[&[u8]]) -> Result<(), SnapshotError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SnapshotError::Io { path: p, source }
    };
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        for part in parts {
            file.write_all(part).map_err(io(&tmp))?;
        }
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ObjectKind;

    fn objects() -> Vec<ClusterObject> {
        let service: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "annotations": {"big": "x".repeat(1000)},
                         "managedFields": [{"manager": "kubectl"}], "resourceVersion": "7"},
            "spec": {"clusterIP": "192.0.2.10", "ports": [{"name": "http", "port": 80}]},
            "status": {"loadBalancer": {}}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web", "other": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.51.100.1"], "conditions": {"ready": true},
                           "hostname": "a", "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"name": "http", "port": 8080}]
        }))
        .unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "198.51.100.1", "podIPs": [{"ip": "198.51.100.1"}],
                       "phase": "Running", "hostIP": "203.0.113.1"}
        }))
        .unwrap();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}
        }))
        .unwrap();
        vec![
            ClusterObject::Service(Box::new(service)),
            ClusterObject::EndpointSlice(Box::new(slice)),
            ClusterObject::Pod(Box::new(pod)),
            ClusterObject::Namespace(Box::new(ns)),
        ]
    }

    fn file() -> Vec<u8> {
        let items: Vec<Box<str>> = objects()
            .iter()
            .map(|o| encode_object(&trim(o)).unwrap())
            .collect();
        encode(
            items.iter().map(|s| &**s),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1234),
        )
    }

    #[test]
    fn a_snapshot_round_trips_trimmed_objects() {
        let bytes = file();
        let snap = decode(Path::new("s"), &bytes).unwrap();
        assert_eq!(
            snap.written,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1234)
        );
        let kinds: Vec<ObjectKind> = snap.objects.iter().map(|o| o.kind()).collect();
        assert_eq!(
            kinds,
            [
                ObjectKind::Service,
                ObjectKind::EndpointSlice,
                ObjectKind::Pod,
                ObjectKind::Namespace
            ]
        );
        let keys: Vec<String> = snap
            .objects
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "Service default/web",
                "EndpointSlice default/web-1",
                "Pod default/p",
                "Namespace default"
            ]
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("192.0.2.10") && text.contains("198.51.100.1"),
            "{text}"
        );
        assert!(text.contains("kubernetes.io/service-name"), "{text}");
        assert!(text.contains("\"hostname\":\"a\""), "{text}");
        for gone in [
            "annotations",
            "managedFields",
            "resourceVersion",
            "targetRef",
            "containers",
            "hostIP",
            "\"other\"",
        ] {
            assert!(!text.contains(gone), "{gone} kept: {text}");
        }
        match &snap.objects[1] {
            ClusterObject::EndpointSlice(s) => {
                assert_eq!(
                    s.endpoints[0].conditions.as_ref().and_then(|c| c.ready),
                    Some(true)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_changed_or_foreign_files_are_rejected() {
        let bytes = file();
        let path = Path::new("/var/lib/clusterdns/snapshot");
        let reason = |b: &[u8]| match decode(path, b) {
            Err(e @ SnapshotError::Corrupt { .. }) => e.to_string(),
            other => panic!("accepted or wrong error: {other:?}"),
        };
        assert!(reason(&bytes[..bytes.len() - 10]).contains("truncated"));
        assert!(reason(&bytes[..20]).contains("header"));
        assert!(reason(b"").contains("no header"));
        let mut flipped = bytes.clone();
        let at = flipped.len() - 20;
        flipped[at] ^= 0x01;
        assert!(reason(&flipped).contains("checksum"));
        let mut extended = bytes.clone();
        extended.extend_from_slice(b"more");
        assert!(reason(&extended).contains("truncated or extended"));
        assert!(reason(b"hello world\n{}").contains("bad header"));
        assert!(reason(b"other 1 2 0000000000000000 0\n{}").contains("not a clusterdns"));
        assert!(reason(b"clusterdns-snapshot 9 2 0000000000000000 0\n{}").contains("version"));
        // Intact framing around a body that is not a list of known objects.
        let body = br#"{"items":[{"kind":"ConfigMap"}]}"#;
        let forged = format!(
            "clusterdns-snapshot 1 {} {:016x} 0\n",
            body.len(),
            fnv1a(body)
        );
        let mut forged = forged.into_bytes();
        forged.extend_from_slice(body);
        assert!(reason(&forged).contains("ConfigMap"));
        assert!(decode(path, &bytes).is_ok());
        assert!(reason(&flipped).starts_with("/var/lib/clusterdns/snapshot: corrupt snapshot"));
    }

    #[test]
    fn writing_is_atomic_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        write_atomic(&path, &[&file()]).unwrap();
        write_atomic(&path, &[&file()[..10], &file()[10..]]).unwrap();
        assert_eq!(read(&path).unwrap().objects.len(), 4);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["snap"]);
        let err = write_atomic(&dir.path().join("missing/snap"), &[b"x"]).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
        assert!(matches!(
            read(&dir.path().join("nope")),
            Err(SnapshotError::Io { .. })
        ));
    }
}

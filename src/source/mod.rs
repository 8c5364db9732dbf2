//! Sources of cluster data: the boundary between "where objects come from" and the zone.
//!
//! A source turns the outside world (a manifest directory today, the Kubernetes API and a
//! last-good snapshot later) into [`SourceEvent`]s carrying the real k8s-openapi types. It knows
//! nothing of DNS: it must not build names or records. The zone consumes the events through
//! [`EventSink`] and does not care which source sent them.

pub mod kubernetes;
pub mod manifests;
pub mod snapshot;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::fmt;

/// One Kubernetes object that the zone can be built from.
#[derive(Clone, Debug)]
pub enum ClusterObject {
    /// A `v1/Service`.
    Service(Box<Service>),
    /// A `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice(Box<EndpointSlice>),
    /// A `v1/Pod` (only used for pod records in `verified` mode).
    Pod(Box<Pod>),
    /// A `v1/Namespace` (makes `<ns>.svc.<zone>` an existing name even without services).
    Namespace(Box<Namespace>),
}

/// The kinds of object a source can deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// `v1/Service`
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`
    EndpointSlice,
    /// `v1/Pod`
    Pod,
    /// `v1/Namespace`
    Namespace,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Pod => "Pod",
            ObjectKind::Namespace => "Namespace",
        })
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// What kind of object this is.
    pub kind: ObjectKind,
    /// The namespace, or `""` for a Namespace object.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl ClusterObject {
    /// The kind of this object.
    pub fn kind(&self) -> ObjectKind {
        match self {
            ClusterObject::Service(_) => ObjectKind::Service,
            ClusterObject::EndpointSlice(_) => ObjectKind::EndpointSlice,
            ClusterObject::Pod(_) => ObjectKind::Pod,
            ClusterObject::Namespace(_) => ObjectKind::Namespace,
        }
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            ClusterObject::Service(o) => &o.metadata,
            ClusterObject::EndpointSlice(o) => &o.metadata,
            ClusterObject::Pod(o) => &o.metadata,
            ClusterObject::Namespace(o) => &o.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            ClusterObject::Service(o) => &mut o.metadata,
            ClusterObject::EndpointSlice(o) => &mut o.metadata,
            ClusterObject::Pod(o) => &mut o.metadata,
            ClusterObject::Namespace(o) => &mut o.metadata,
        }
    }

    /// Marks the object as read from manifest `file`: its `selfLink` becomes
    /// `file://<path>` (see [`MANIFEST_FILE_LINK`]).
    pub fn set_manifest_file(&mut self, file: &str) {
        self.meta_mut().self_link = Some(format!("{MANIFEST_FILE_LINK}{file}"));
    }

    /// Its `metadata.resourceVersion` (objects from the API, or manifests saved from it).
    pub fn resource_version(&self) -> Option<ResourceVersion> {
        self.meta()
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(ResourceVersion::new)
    }

    /// The manifest file that defines it ([`MANIFEST_FILE_LINK`]), if a manifest does.
    pub fn manifest_file(&self) -> Option<&str> {
        self.meta()
            .self_link
            .as_deref()
            .and_then(|link| link.strip_prefix(MANIFEST_FILE_LINK))
    }

    /// The object's identity, or `None` when it has no name (such an object is rejected).
    pub fn key(&self) -> Option<ObjectKey> {
        let meta = self.meta();
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        let namespace = match self.kind() {
            ObjectKind::Namespace => String::new(),
            // `kubectl apply` puts namespace-less objects in "default"; so do we.
            _ => meta
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string()),
        };
        Some(ObjectKey {
            kind: self.kind(),
            namespace,
            name,
        })
    }
}

/// The manifest source sets `metadata.selfLink` ("a URL representing this object") of the
/// objects it emits to `file://<path of the manifest that defines it>`. Carrying it in the
/// object's own metadata keeps [`SourceEvent`] unchanged for every source; the zone keeps
/// only the path (for explanations), never the object. The API server has not set
/// `selfLink` since Kubernetes 1.20, and only this prefix is read. Not an annotation: a
/// source's batch of 100,000 objects would allocate a map node (about 600 bytes) for each.
pub const MANIFEST_FILE_LINK: &str = "file://";

/// A `metadata.resourceVersion`. Opaque to clients, but on every API server there is the
/// etcd revision, a number: kept as one, without an allocation of its own (a string each was
/// 3 MB at 50,000 Services and as many EndpointSlices); anything else as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceVersion {
    /// A decimal number, written without leading zeros.
    Revision(u64),
    /// Anything else, as written (behind one more pointer, so that the common case stays
    /// 16 bytes).
    Text(Box<Box<str>>),
}

const _: () = assert!(std::mem::size_of::<ResourceVersion>() == 16);

impl ResourceVersion {
    /// `version` as kept.
    pub fn new(version: &str) -> ResourceVersion {
        match version.parse::<u64>() {
            // Only where writing the number back gives the same text.
            Ok(revision) if !version.starts_with(['0', '+']) || version == "0" => {
                ResourceVersion::Revision(revision)
            }
            _ => ResourceVersion::Text(Box::new(version.into())),
        }
    }
}

impl fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceVersion::Revision(revision) => write!(f, "{revision}"),
            ResourceVersion::Text(text) => f.write_str(text),
        }
    }
}

/// What a source tells the zone.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// The object was created or changed: replace whatever was known under its key.
    Apply(ClusterObject),
    /// The object is gone.
    Delete(ObjectKey),
    /// The source has delivered its complete initial state: "not found" is now NXDOMAIN
    /// rather than SERVFAIL.
    InitialSyncDone,
}

/// Where a source delivers its events. The zone implements it; tests can record events.
pub trait EventSink: Send + Sync {
    /// Apply one event. Must be cheap: the cost may depend on the size of the object, never
    /// on the size of the whole zone.
    fn handle(&self, event: SourceEvent);

    /// Apply events in order, as one change where the sink can do better than one by one
    /// (the zone rebuilds each Service the batch touches once).
    fn handle_batch(&self, events: Vec<SourceEvent>) {
        for event in events {
            self.handle(event);
        }
    }

    /// The keys of the objects of `kind` the sink holds (in `namespace` only, when given)
    /// for which `listed(namespace, name)` is false. (A Namespace's own namespace is `""`.)
    fn unlisted(
        &self,
        kind: ObjectKind,
        namespace: Option<&str>,
        listed: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<ObjectKey>;

    /// Deletes the objects [`EventSink::unlisted`] names, as one batch, and returns how many
    /// went. A source that lists again after a gap (the API's watch after a 410 or an
    /// outage) learns this way what disappeared meanwhile, without keeping a key of its own
    /// for every object: the sink holds them already.
    fn delete_unlisted(
        &self,
        kind: ObjectKind,
        namespace: Option<&str>,
        listed: &dyn Fn(&str, &str) -> bool,
    ) -> usize {
        let gone = self.unlisted(kind, namespace, listed);
        let count = gone.len();
        self.handle_batch(gone.into_iter().map(SourceEvent::Delete).collect());
        count
    }
}

#[cfg(test)]
mod tests {
    use super::ResourceVersion;

    #[test]
    fn a_resource_version_is_kept_as_a_number_only_when_it_reads_back_the_same() {
        for (text, number) in [
            ("0", 0),
            ("123456", 123_456),
            ("18446744073709551615", u64::MAX),
        ] {
            let kept = ResourceVersion::new(text);
            assert_eq!(kept, ResourceVersion::Revision(number));
            assert_eq!(kept.to_string(), text);
        }
        for text in ["007", "+5", "18446744073709551616", "abc", "12a", " 1"] {
            let kept = ResourceVersion::new(text);
            assert_eq!(kept, ResourceVersion::Text(Box::new(text.into())), "{text}");
            assert_eq!(kept.to_string(), text);
        }
    }
}

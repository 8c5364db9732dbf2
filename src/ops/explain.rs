//! `clusterdns explain`: what the server answers to one question, and why.
//!
//! Owns: the explanation's stable shape ([`Explanation`], [`SearchExplanation`]; the
//! `--json` output, documented in the README), putting it together from the zone
//! ([`Zone::explain`]) and the upstream path (route, upstream health, a cache peek), the
//! ClusterFirst search-list expansion, and the text rendering shared by the CLI and the query
//! log's `--trace-name`.
//!
//! Explaining changes nothing: the zone part is read under the zone's own lock, the cache is
//! peeked (no fill, no counters), no upstream is asked and no query metric moves. Only
//! [`explain_resolving`] (`--resolve`) sends the question through the normal upstream path.

use crate::upstream::Resolver;
use crate::zone::explain::{ExcludedEndpoint, FailedLabel, Provenance, zone_file_line};
use crate::zone::{Lookup, Zone};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The version of the `--json` shape; bumped only when a field changes meaning or goes away.
pub const FORMAT_VERSION: u32 = 1;

/// The ndots of a pod's ClusterFirst resolv.conf (kubelet writes `options ndots:5`).
pub const DEFAULT_NDOTS: u8 = 5;

/// What the explanation needs to know of the server's configuration.
#[derive(Clone, Debug, Default)]
pub struct ExplainContext {
    /// The source of cluster data in use, in words (`manifests /etc/dns`, `kubernetes API`).
    pub source: String,
    /// `kubernetes.namespaces`: the only namespaces served (empty: all).
    pub namespaces: Vec<String>,
    /// `kubernetes.labels`: the label selector of watched Services and EndpointSlices.
    pub labels: Option<String>,
    /// The node's search domains, which kubelet appends to a ClusterFirst pod's search list:
    /// the `search` line of the server's own resolv.conf (it runs with `dnsPolicy: Default`,
    /// so that is the node's), without domains under the cluster zone.
    pub node_search: Vec<String>,
    /// `clusterdns_snapshot_in_use`: 1 while the Kubernetes source serves its last-good
    /// snapshot (the API unreachable); `None` without the Kubernetes source.
    pub snapshot_in_use: Option<prometheus::IntGauge>,
    /// Per kind the Kubernetes source watches: `clusterdns_source_synced` and
    /// `clusterdns_source_last_sync_timestamp_seconds` (empty without that source).
    pub api_watches: Vec<(String, prometheus::IntGauge, prometheus::Gauge)>,
}

/// The explanation of one question (`clusterdns explain NAME [TYPE] --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The question's name, fully qualified.
    pub name: String,
    /// The question's type (`A`, `AAAA`, `SRV`, ...).
    #[serde(rename = "type")]
    pub qtype: String,
    /// Who answers: `zone` (the cluster zone), `upstream` (forwarded: cache or upstreams),
    /// `refused` (zone transfers), `not_synced` (cluster data not loaded yet).
    pub path: String,
    /// The rcode the client gets (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, `REFUSED`); `null` when
    /// it is up to an upstream not asked (not cached and no `--resolve`).
    pub rcode: Option<String>,
    /// Whether the answer is authoritative (the zone's).
    pub authoritative: bool,
    /// The answer section, each record with the object that produced it.
    pub answers: Vec<ExplainedRecord>,
    /// The authority section (zone-file lines).
    pub authority: Vec<String>,
    /// The additional section (zone-file lines).
    pub additional: Vec<String>,
    /// The Service the name belongs to, when it names an existing one.
    pub service: Option<Provenance>,
    /// That Service's endpoints without records, each with its rule.
    pub excluded: Vec<ExcludedEndpoint>,
    /// For NXDOMAIN in the zone: the label that names nothing, with close matches.
    pub nxdomain: Option<FailedLabel>,
    /// For NODATA: the types the name has.
    pub types_present: Vec<String>,
    /// For `path: upstream` (and a CNAME leaving the zone): route, health, cache entry.
    pub upstream: Option<UpstreamPath>,
    /// How fresh the cluster data is.
    pub data: DataFreshness,
    /// Everything else, in words.
    pub notes: Vec<String>,
}

/// One answer record and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainedRecord {
    /// The record as a zone-file line.
    pub record: String,
    /// The object behind it (`null` for upstream answers).
    pub source: Option<Provenance>,
}

/// The upstream path of a name outside the zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamPath {
    /// The name the upstream path is asked for (the CNAME target when a chain leaves the zone).
    pub name: String,
    /// The stub domain that routes it; `null`: the default upstreams.
    pub stub_domain: Option<String>,
    /// Those upstreams, in configuration order, with their health.
    pub upstreams: Vec<UpstreamStatus>,
    /// The cache entry for a plain query of the name, if any.
    pub cache: Option<CacheEntry>,
    /// True when `--resolve` asked through the normal path (cache, then upstreams).
    pub resolved: bool,
    /// With `--resolve`: where the answer came from, `upstream`, `cache` or `stale`.
    pub served_from: Option<String>,
}

/// One upstream's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    /// `IP:PORT`.
    pub address: String,
    /// False while marked down after repeated failures.
    pub healthy: bool,
    /// It loops back to this server and is not used.
    pub looped: bool,
    /// Failed tries in a row.
    pub consecutive_failures: u32,
}

/// A cache entry, read without touching it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// `positive` (an answer with records) or `negative` (NXDOMAIN, NODATA, cached SERVFAIL).
    pub kind: String,
    /// The cached rcode.
    pub rcode: String,
    /// Seconds since it was stored.
    pub age_secs: u64,
    /// Seconds it lives in all.
    pub ttl_secs: u64,
    /// Seconds left (0 when stale).
    pub remaining_secs: u64,
    /// Expired and kept only for serve-stale: answered only if every upstream fails.
    pub stale: bool,
    /// The cached answer section, TTLs as a client would get them now.
    pub records: Vec<String>,
}

/// How fresh the cluster data is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFreshness {
    /// The source in use, in words: `manifests DIR`, `kubernetes API ...`, or `none`.
    pub source: String,
    /// True once the source delivered its initial state.
    pub synced: bool,
    /// The zone's SOA serial.
    pub serial: u32,
    /// When the zone last changed (seconds since the Unix epoch); `null` before any data.
    pub last_change_unix: Option<u64>,
    /// Seconds since then.
    pub seconds_since_change: Option<u64>,
    /// The Kubernetes API source's watches, one per kind (empty for other sources).
    pub api_watches: Vec<ApiWatch>,
}

/// One watch of the Kubernetes API source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiWatch {
    /// `Service`, `EndpointSlice`, `Namespace` or `Pod`.
    pub kind: String,
    /// Listed and healthy now.
    pub synced: bool,
    /// When its data was last known in sync (seconds since the Unix epoch); `null`: never.
    pub last_sync_unix: Option<u64>,
    /// Seconds since then.
    pub seconds_since_sync: Option<u64>,
}

/// The questions a pod's resolver sends for a name (`--search NS`), in order, with answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchExplanation {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The name as the application wrote it.
    pub name: String,
    /// The question type.
    #[serde(rename = "type")]
    pub qtype: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The resolv.conf `ndots`.
    pub ndots: u8,
    /// The resolv.conf search list (ClusterFirst: `NS.svc.ZONE svc.ZONE ZONE`, then the
    /// node's search domains).
    pub search_list: Vec<String>,
    /// Each question sent, in order, with its full explanation; the resolver stops at the
    /// first answer that ends the search.
    pub queries: Vec<Explanation>,
    /// How many questions of this type the pod sends (`queries.len()`).
    pub count: usize,
    /// Index in `queries` of the answer the application gets; `null` when none answers.
    pub answered_by: Option<usize>,
    /// How to send fewer questions.
    pub advice: Vec<String>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rcode_text(rcode: ResponseCode) -> String {
    crate::ops::metrics::rcode_label(rcode).to_string()
}

/// Explains `name`/`qtype` without changing any state (see the module documentation).
pub fn explain(
    zone: &Zone,
    resolver: &Resolver,
    context: &ExplainContext,
    name: &Name,
    qtype: RecordType,
) -> Explanation {
    let name = fully_qualified(name);
    let found = zone.explain(&name, qtype);
    let mut out = Explanation {
        version: FORMAT_VERSION,
        name: name.to_string(),
        qtype: qtype.to_string(),
        path: "zone".into(),
        rcode: None,
        authoritative: false,
        answers: Vec::new(),
        authority: Vec::new(),
        additional: Vec::new(),
        service: found.service,
        excluded: found.excluded,
        nxdomain: found.failed,
        types_present: found.types_present,
        upstream: None,
        data: freshness(zone, context),
        notes: found.notes,
    };
    match found.lookup {
        Lookup::Answer(answer) => {
            out.rcode = Some(rcode_text(answer.rcode));
            out.authoritative = true;
            out.answers = answer
                .answers
                .iter()
                .zip(found.answer_sources)
                .map(|(record, source)| ExplainedRecord {
                    record: zone_file_line(record),
                    source,
                })
                .collect();
            out.authority = answer.authorities.iter().map(zone_file_line).collect();
            out.additional = answer.additionals.iter().map(zone_file_line).collect();
            if let Some(target) = &answer.external_target {
                out.upstream = Some(upstream_path(resolver, target, qtype));
            }
        }
        Lookup::NotSynced => {
            out.path = "not_synced".into();
            out.rcode = Some(rcode_text(ResponseCode::ServFail));
        }
        Lookup::Refused => {
            out.path = "refused".into();
            out.rcode = Some(rcode_text(ResponseCode::Refused));
        }
        Lookup::NotOurs if matches!(qtype, RecordType::AXFR | RecordType::IXFR) => {
            out.path = "refused".into();
            out.rcode = Some(rcode_text(ResponseCode::Refused));
            out.notes.push("zone transfers are refused".into());
        }
        Lookup::NotOurs => {
            out.path = "upstream".into();
            let path = upstream_path(resolver, &name, qtype);
            match &path.cache {
                Some(entry) if !entry.stale => {
                    out.rcode = Some(entry.rcode.clone());
                    out.answers = entry
                        .records
                        .iter()
                        .map(|record| ExplainedRecord {
                            record: record.clone(),
                            source: None,
                        })
                        .collect();
                    out.notes.push(format!(
                        "answered from the cache ({} entry, {} s left of {} s)",
                        entry.kind, entry.remaining_secs, entry.ttl_secs
                    ));
                }
                cached => {
                    out.notes.push(format!(
                        "{}: a query now is forwarded to {}; explain does not ask (use --resolve)",
                        if cached.is_some() {
                            "only an expired (serve-stale) entry is cached"
                        } else {
                            "not in the cache"
                        },
                        route_words(&path),
                    ));
                }
            }
            if !zone.origin().zone_of(&name) && is_reverse(&name) {
                out.notes.push(
                    "a reverse name the cluster does not own (no Service or endpoint has that \
                     address): forwarded"
                        .into(),
                );
            }
            out.upstream = Some(path);
        }
    }
    if qtype == RecordType::ANY {
        out.notes.push(
            "an ANY question gets one HINFO record instead (RFC 8482); shown is what the zone \
             holds"
                .into(),
        );
    }
    if let Some(failed) = &out.nxdomain {
        if failed.expected == "namespace"
            && !context.namespaces.is_empty()
            && !context.namespaces.contains(&failed.label)
        {
            out.notes.push(format!(
                "namespace '{}' is not served: kubernetes.namespaces = [{}]",
                failed.label,
                context.namespaces.join(", ")
            ));
        }
        if failed.expected == "service"
            && let Some(labels) = &context.labels
        {
            out.notes.push(format!(
                "only Services and EndpointSlices matching the label selector '{labels}' \
                 (kubernetes.labels) reach this server"
            ));
        }
    }
    out
}

/// As [`explain`], and with `--resolve` a name the upstream path answers (or the target of
/// a CNAME chain leaving the zone) is resolved through it: cache, then upstreams, as a
/// client's query would, so that may fill the cache. The chain's answer is appended to the
/// zone's part with the upstream's rcode, as the handler does.
pub async fn explain_resolving(
    zone: &Zone,
    resolver: &std::sync::Arc<Resolver>,
    context: &ExplainContext,
    name: &Name,
    qtype: RecordType,
) -> Explanation {
    let mut out = explain(zone, resolver, context, name, qtype);
    let chain = out.path == "zone";
    let target = match (&out.upstream, chain) {
        (Some(path), true) => match Name::from_ascii(&path.name) {
            Ok(target) => target,
            Err(_) => return out,
        },
        (_, false) if out.path == "upstream" => fully_qualified(name),
        _ => return out,
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(target, qtype));
    match resolver.resolve(&query).await {
        Ok(answer) => {
            out.rcode = Some(rcode_text(answer.answer.rcode));
            let records = answer.answer.answers.iter().map(|record| ExplainedRecord {
                record: zone_file_line(record),
                source: None,
            });
            if chain {
                out.answers.extend(records);
            } else {
                out.answers = records.collect();
            }
            // As the handler's chain: the upstream's authority replaces the zone's when the
            // chain ends negative.
            if !chain || answer.answer.rcode != ResponseCode::NoError || out.answers.len() <= 1 {
                out.authority = answer
                    .answer
                    .authorities
                    .iter()
                    .map(zone_file_line)
                    .collect();
            }
            if let Some(path) = out.upstream.as_mut() {
                path.resolved = true;
                path.served_from = Some(answer.served.label().to_string());
            }
            out.notes.push(format!(
                "--resolve: answered by the {}",
                answer.served.label()
            ));
        }
        Err(error) => {
            out.rcode = Some(rcode_text(ResponseCode::ServFail));
            if let Some(path) = out.upstream.as_mut() {
                path.resolved = true;
            }
            out.notes
                .push(format!("--resolve: the upstream path failed: {error}"));
        }
    }
    out
}

fn fully_qualified(name: &Name) -> Name {
    let mut name = name.clone();
    name.set_fqdn(true);
    name
}

fn is_reverse(name: &Name) -> bool {
    let text = name.to_lowercase().to_ascii();
    text.ends_with(".in-addr.arpa.") || text.ends_with(".ip6.arpa.")
}

fn freshness(zone: &Zone, context: &ExplainContext) -> DataFreshness {
    let last = zone.last_change_unix();
    let snapshot = context
        .snapshot_in_use
        .as_ref()
        .is_some_and(|gauge| gauge.get() != 0);
    DataFreshness {
        source: if snapshot {
            format!(
                "{}: SERVING THE LAST-GOOD SNAPSHOT, the API has not synced yet",
                context.source
            )
        } else if context.source.is_empty() {
            "none".into()
        } else {
            context.source.clone()
        },
        synced: zone.is_synced(),
        serial: zone.serial(),
        last_change_unix: last,
        seconds_since_change: last.map(|at| unix_now().saturating_sub(at)),
        api_watches: context
            .api_watches
            .iter()
            .map(|(kind, synced, last)| {
                let at = Some(last.get()).filter(|t| *t > 0.0).map(|t| t as u64);
                ApiWatch {
                    kind: kind.clone(),
                    synced: synced.get() != 0,
                    last_sync_unix: at,
                    seconds_since_sync: at.map(|at| unix_now().saturating_sub(at)),
                }
            })
            .collect(),
    }
}

fn upstream_path(resolver: &Resolver, name: &Name, qtype: RecordType) -> UpstreamPath {
    let route = resolver.route_of(name);
    let cache = resolver.peek_cache(name, qtype).map(|peek| CacheEntry {
        kind: if peek.positive {
            "positive"
        } else {
            "negative"
        }
        .into(),
        rcode: rcode_text(peek.answer.rcode),
        age_secs: peek.age.as_secs(),
        ttl_secs: peek.ttl.as_secs(),
        remaining_secs: peek.remaining().as_secs(),
        stale: peek.stale,
        records: peek.answer.answers.iter().map(zone_file_line).collect(),
    });
    UpstreamPath {
        name: name.to_string(),
        stub_domain: route.stub_domain.map(|d| d.to_string()),
        upstreams: route
            .upstreams
            .iter()
            .map(|u| UpstreamStatus {
                address: u.addr.to_string(),
                healthy: u.healthy,
                looped: u.looped,
                consecutive_failures: u.consecutive_failures,
            })
            .collect(),
        cache,
        resolved: false,
        served_from: None,
    }
}

fn route_words(path: &UpstreamPath) -> String {
    let list = path
        .upstreams
        .iter()
        .map(|u| u.address.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match &path.stub_domain {
        Some(domain) => format!("stub domain {domain} ({list})"),
        None if list.is_empty() => "no upstream (SERVFAIL)".into(),
        None => format!("the default upstreams ({list})"),
    }
}

/// The names a glibc stub resolver asks for `name`, in order, with the ClusterFirst search
/// list of namespace `namespace` (kubelet: `search NS.svc.ZONE svc.ZONE ZONE` followed by the
/// node's search domains `node_search`, and `options ndots:5`).
///
/// glibc `res_nsearch`: a name ending in a dot is asked as is, alone. A name with at least
/// `ndots` dots is asked as is first, then with each search domain. Otherwise each search
/// domain comes first and the name as is last.
pub fn search_names(
    name: &str,
    namespace: &str,
    origin: &Name,
    ndots: u8,
    node_search: &[String],
) -> Result<(Vec<String>, Vec<Name>), String> {
    let zone = origin.to_ascii();
    let zone = zone.trim_end_matches('.');
    let mut search_list = vec![
        format!("{namespace}.svc.{zone}"),
        format!("svc.{zone}"),
        zone.to_string(),
    ];
    for domain in node_search {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !domain.is_empty() && !search_list.contains(&domain) {
            search_list.push(domain);
        }
    }
    let parse =
        |s: &str| Name::from_ascii(s).map_err(|e| format!("{s:?} is not a domain name: {e}"));
    if name.ends_with('.') {
        return Ok((search_list, vec![parse(name)?]));
    }
    let absolute = parse(&format!("{name}."))?;
    let expanded = search_list
        .iter()
        .map(|domain| parse(&format!("{name}.{domain}.")))
        .collect::<Result<Vec<_>, _>>()?;
    let dots = name.matches('.').count();
    let names = if dots >= usize::from(ndots) {
        std::iter::once(absolute).chain(expanded).collect()
    } else {
        expanded
            .into_iter()
            .chain(std::iter::once(absolute))
            .collect()
    };
    Ok((search_list, names))
}

/// Whether glibc goes on to the next search candidate after this answer: on NXDOMAIN, NODATA
/// and SERVFAIL it does (res_nsearch: HOST_NOT_FOUND, NO_DATA, TRY_AGAIN with SERVFAIL);
/// an answer with records, or any other error, ends the search. An answer not known (an
/// upstream not asked) ends it too: that is where the pod would wait for the upstream.
pub fn search_goes_on(explanation: &Explanation) -> bool {
    match explanation.rcode.as_deref() {
        Some("NXDOMAIN") | Some("SERVFAIL") => true,
        Some("NOERROR") => explanation.answers.is_empty(),
        _ => false,
    }
}

/// Advice for a search that sent more questions than needed. The question that ends the
/// search is the answer when known, else the last one sent (an upstream not asked).
pub fn search_advice(
    name: &str,
    ndots: u8,
    queries: &[Explanation],
    answered_by: Option<usize>,
) -> Vec<String> {
    let mut advice = Vec::new();
    if name.ends_with('.') || queries.len() < 2 {
        return advice;
    }
    let dots = name.matches('.').count();
    let last = queries.len() - 1;
    let ends_unknown = queries.get(last).is_some_and(|q| q.rcode.is_none());
    let index = match answered_by {
        Some(index) => index,
        None if ends_unknown => last,
        None => {
            advice.push(format!(
                "no candidate answered: check the name; each lookup costs {} questions",
                queries.len()
            ));
            return advice;
        }
    };
    let Some(answer) = queries.get(index) else {
        return advice;
    };
    if index == 0 {
        return advice;
    }
    let absolute = answer.name.trim_end_matches('.') == name.to_ascii_lowercase();
    if absolute {
        advice.push(format!(
            "write the name with a trailing dot ({name}.) to ask 1 question instead of {}",
            queries.len()
        ));
        if dots > 0 {
            advice.push(format!(
                "or set dnsConfig.options ndots: \"{dots}\" in the pod spec (now {ndots}): names \
                 with {dots} or more dots are then asked as is first"
            ));
        }
    } else {
        advice.push(format!(
            "write the full name ({}) to ask 1 question instead of {}",
            answer.name,
            index + 1
        ));
    }
    advice.push(
        "getaddrinfo() asks A and AAAA for each candidate: twice as many packets".to_string(),
    );
    advice
}

// ---------------------------------------------------------------- text

fn age(changed: u64, now: u64) -> String {
    format!("{} s ago", now.saturating_sub(changed))
}

fn provenance_text(p: &Provenance, now: u64) -> String {
    let mut text = p.kind.clone();
    match (&p.namespace, &p.name) {
        (Some(ns), Some(name)) => {
            let _ = write!(text, " {ns}/{name}");
        }
        (None, Some(name)) => {
            let _ = write!(text, " {name}");
        }
        _ => {}
    }
    if let Some(version) = &p.resource_version {
        let _ = write!(text, " resourceVersion {version}");
    }
    if let Some(file) = &p.file {
        let _ = write!(text, " from {file}");
    }
    if let Some(changed) = p.changed_unix {
        let _ = write!(text, ", changed {}", age(changed, now));
    }
    if let Some(note) = &p.note {
        let _ = write!(text, "; {note}");
    }
    text
}

/// The explanation as text (`clusterdns explain` without `--json`, and `--trace-name`).
pub fn render(e: &Explanation) -> String {
    let now = unix_now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}: {} from {}",
        e.name,
        e.qtype,
        e.rcode.as_deref().unwrap_or("unknown (not asked)"),
        match e.path.as_str() {
            "zone" => "the cluster zone (authoritative)",
            "upstream" => "the upstream path",
            "refused" => "nobody: refused",
            "not_synced" => "nobody: cluster data not loaded yet",
            other => other,
        }
    );
    for answer in &e.answers {
        let _ = writeln!(out, "  {}", answer.record);
        if let Some(source) = &answer.source {
            let _ = writeln!(out, "      <- {}", provenance_text(source, now));
        }
    }
    for line in &e.authority {
        let _ = writeln!(out, "  authority: {line}");
    }
    for line in &e.additional {
        let _ = writeln!(out, "  additional: {line}");
    }
    if let Some(service) = &e.service {
        let _ = writeln!(out, "service: {}", provenance_text(service, now));
    }
    if !e.excluded.is_empty() {
        let _ = writeln!(out, "endpoints left out:");
        for x in &e.excluded {
            let _ = writeln!(
                out,
                "  {}{} (EndpointSlice {}): {} - {}",
                x.address,
                x.hostname
                    .as_deref()
                    .map(|h| format!(" hostname {h}"))
                    .unwrap_or_default(),
                x.slice,
                x.reason,
                x.rule
            );
        }
    }
    if let Some(failed) = &e.nxdomain {
        let _ = write!(out, "NXDOMAIN because: {}", failed.message);
        if !failed.suggestions.is_empty() {
            let quoted: Vec<String> = failed
                .suggestions
                .iter()
                .map(|s| format!("'{s}'"))
                .collect();
            let _ = write!(out, "; did you mean {}?", quoted.join(" or "));
        }
        out.push('\n');
    }
    if !e.types_present.is_empty() {
        let _ = writeln!(
            out,
            "NODATA: the name has {} records, no {}",
            e.types_present.join(", "),
            e.qtype
        );
    }
    if let Some(up) = &e.upstream {
        let _ = writeln!(out, "upstream path for {}: {}", up.name, route_words(up));
        for u in &up.upstreams {
            let _ = writeln!(
                out,
                "  {} {}{}",
                u.address,
                if u.looped {
                    "LOOPS BACK (not used)"
                } else if u.healthy {
                    "healthy"
                } else {
                    "DOWN"
                },
                if u.consecutive_failures > 0 {
                    format!(", {} failures in a row", u.consecutive_failures)
                } else {
                    String::new()
                }
            );
        }
        match &up.cache {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "  cache: {} {} entry, age {} s, {} s left of {} s{}",
                    c.kind,
                    c.rcode,
                    c.age_secs,
                    c.remaining_secs,
                    c.ttl_secs,
                    if c.stale {
                        " (STALE: served only if every upstream fails)"
                    } else {
                        " (fresh)"
                    }
                );
            }
            None => {
                let _ = writeln!(out, "  cache: no entry");
            }
        }
    }
    for note in &e.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let d = &e.data;
    let _ = writeln!(
        out,
        "data: {}, {}, serial {}{}",
        d.source,
        if d.synced { "synced" } else { "NOT synced yet" },
        d.serial,
        d.seconds_since_change
            .map(|s| format!(", last change {s} s ago"))
            .unwrap_or_default()
    );
    for watch in &d.api_watches {
        let _ = writeln!(
            out,
            "  watch {}: {}{}",
            watch.kind,
            if watch.synced {
                "in sync"
            } else {
                "NOT in sync"
            },
            watch
                .seconds_since_sync
                .map(|s| format!(", last known in sync {s} s ago"))
                .unwrap_or_else(|| ", never in sync".to_string())
        );
    }
    out
}

/// The search explanation as text.
pub fn render_search(s: &SearchExplanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} from a pod in namespace {} (search {}; ndots:{}): {} question(s)",
        s.name,
        s.qtype,
        s.namespace,
        s.search_list.join(" "),
        s.ndots,
        s.count
    );
    for (i, q) in s.queries.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. {} {} -> {}{}",
            i + 1,
            q.name,
            q.qtype,
            q.rcode.as_deref().unwrap_or("unknown (upstream not asked)"),
            if Some(i) == s.answered_by {
                "  <= the answer"
            } else {
                ""
            }
        );
    }
    if s.answered_by.is_none() {
        let unknown = s.queries.last().is_some_and(|q| q.rcode.is_none());
        let _ = writeln!(
            out,
            "  {}",
            if unknown {
                "the search ends at a question only an upstream can answer (use --resolve to ask)"
            } else {
                "no candidate answered"
            }
        );
    }
    for advice in &s.advice {
        let _ = writeln!(out, "advice: {advice}");
    }
    if let Some(answer) = s.answered_by.and_then(|i| s.queries.get(i)) {
        out.push('\n');
        out.push_str(&render(answer));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Name {
        Name::from_ascii("cluster.local.").unwrap()
    }

    fn names(list: &[Name]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_short_name_tries_the_search_list_first_then_the_name_as_is() {
        let (search, list) = search_names("www.example.org", "default", &zone(), 5, &[]).unwrap();
        assert_eq!(
            search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(
            names(&list),
            [
                "www.example.org.default.svc.cluster.local.",
                "www.example.org.svc.cluster.local.",
                "www.example.org.cluster.local.",
                "www.example.org."
            ]
        );
    }

    #[test]
    fn the_nodes_search_domains_follow_the_cluster_ones() {
        let node = ["corp.example.org".to_string(), "cluster.local.".to_string()];
        let (search, list) = search_names("db", "shop", &zone(), 5, &node).unwrap();
        assert_eq!(
            search,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example.org"
            ]
        );
        assert_eq!(names(&list).last().map(String::as_str), Some("db."));
        assert_eq!(list.len(), 5);
    }

    #[test]
    fn a_name_with_ndots_dots_is_asked_as_is_first_and_a_trailing_dot_only_as_is() {
        let (_, list) = search_names("a.b.c", "shop", &zone(), 2, &[]).unwrap();
        assert_eq!(names(&list)[0], "a.b.c.");
        assert_eq!(list.len(), 4);
        let (_, list) = search_names("www.example.org.", "shop", &zone(), 5, &[]).unwrap();
        assert_eq!(names(&list), ["www.example.org."]);
    }
}

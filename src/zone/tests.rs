//! Zone behaviour as tables of (question, expected answer), without sockets.

use super::*;
use crate::source::ClusterObject;
use records::TriggerTime;
use serde_json::json;

fn zone(pods: PodMode) -> Zone {
    let zone = Zone::new(
        ZoneConfig {
            origin: Name::from_ascii("cluster.local.").unwrap(),
            ttl: 5,
            pods,
        },
        Arc::new(Metrics::new()),
    );
    zone.apply(SourceEvent::InitialSyncDone);
    zone
}

fn service(ns: &str, name: &str, spec: serde_json::Value) -> SourceEvent {
    SourceEvent::Apply(ClusterObject::Service(Box::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .unwrap(),
    )))
}

fn slice(ns: &str, name: &str, svc: &str, body: serde_json::Value) -> SourceEvent {
    let mut value = json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [],
    });
    if let (Some(v), Some(b)) = (value.as_object_mut(), body.as_object()) {
        for (k, x) in b {
            v.insert(k.clone(), x.clone());
        }
    }
    SourceEvent::Apply(ClusterObject::EndpointSlice(Box::new(
        serde_json::from_value(value).unwrap(),
    )))
}

fn pod(ns: &str, name: &str, ip: &str) -> SourceEvent {
    SourceEvent::Apply(ClusterObject::Pod(Box::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .unwrap(),
    )))
}

fn key(kind: ObjectKind, ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: ns.into(),
        name: name.into(),
    }
}

fn n(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// The answer as (rcode, sorted rdata texts, authority types).
fn ask(
    zone: &Zone,
    qname: &str,
    qtype: RecordType,
) -> (ResponseCode, Vec<String>, Vec<RecordType>) {
    match zone.lookup(&n(qname), qtype) {
        Lookup::Answer(a) => {
            let mut data: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
            data.sort();
            (
                a.rcode,
                data,
                a.authorities.iter().map(|r| r.record_type()).collect(),
            )
        }
        other => panic!("{qname} {qtype}: expected an answer, got {other:?}"),
    }
}

fn demo(zone: &Zone) {
    zone.apply(service(
        "default",
        "api",
        json!({"clusterIP": "192.0.2.1", "clusterIPs": ["192.0.2.1", "2001:db8::1"],
               "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                         {"name": "dns", "port": 53, "protocol": "UDP"},
                         {"port": 9000}]}),
    ));
    zone.apply(service(
        "default",
        "web",
        json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
    ));
    zone.apply(slice(
        "default",
        "web-abc",
        "web",
        json!({"endpoints": [
            {"addresses": ["192.0.2.10"], "hostname": "web-0", "conditions": {"ready": true}},
            {"addresses": ["192.0.2.11"], "hostname": "web-1"},
            {"addresses": ["192.0.2.12"], "conditions": {"ready": true}},
            {"addresses": ["192.0.2.13"], "hostname": "web-3", "conditions": {"ready": false}},
        ], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    ));
    zone.apply(service(
        "default",
        "ext",
        json!({"type": "ExternalName", "externalName": "www.example.org"}),
    ));
}

/// (question, type, expected rcode, expected answer data, expected authority types)
type TableRow = (
    &'static str,
    RecordType,
    ResponseCode,
    Vec<&'static str>,
    Vec<RecordType>,
);

const NOERROR: ResponseCode = ResponseCode::NoError;
const NXDOMAIN: ResponseCode = ResponseCode::NXDomain;

#[test]
fn answers_follow_the_specification_table() {
    let zone = zone(PodMode::Disabled);
    demo(&zone);
    let soa = vec![RecordType::SOA];
    let rows: Vec<TableRow> = vec![
        (
            "api.default.svc.cluster.local.",
            RecordType::A,
            NOERROR,
            vec!["192.0.2.1"],
            vec![],
        ),
        (
            "API.Default.SVC.cluster.local.",
            RecordType::AAAA,
            NOERROR,
            vec!["2001:db8::1"],
            vec![],
        ),
        (
            "_http._tcp.api.default.svc.cluster.local.",
            RecordType::SRV,
            NOERROR,
            vec!["0 100 80 api.default.svc.cluster.local."],
            vec![],
        ),
        (
            "_dns._udp.api.default.svc.cluster.local.",
            RecordType::SRV,
            NOERROR,
            vec!["0 100 53 api.default.svc.cluster.local."],
            vec![],
        ),
        (
            "api.default.svc.cluster.local.",
            RecordType::SRV,
            NOERROR,
            vec![
                "0 33 53 api.default.svc.cluster.local.",
                "0 33 80 api.default.svc.cluster.local.",
                "0 33 9000 api.default.svc.cluster.local.",
            ],
            vec![],
        ),
        (
            "_tcp.api.default.svc.cluster.local.",
            RecordType::SRV,
            NOERROR,
            vec![],
            soa.clone(),
        ),
        (
            "_http._udp.api.default.svc.cluster.local.",
            RecordType::SRV,
            NXDOMAIN,
            vec![],
            soa.clone(),
        ),
        (
            "1.2.0.192.in-addr.arpa.",
            RecordType::PTR,
            NOERROR,
            vec!["api.default.svc.cluster.local."],
            vec![],
        ),
        (
            "web.default.svc.cluster.local.",
            RecordType::A,
            NOERROR,
            vec!["192.0.2.10", "192.0.2.11", "192.0.2.12"],
            vec![],
        ),
        (
            "web-0.web.default.svc.cluster.local.",
            RecordType::A,
            NOERROR,
            vec!["192.0.2.10"],
            vec![],
        ),
        (
            "192-0-2-12.web.default.svc.cluster.local.",
            RecordType::A,
            NOERROR,
            vec!["192.0.2.12"],
            vec![],
        ),
        (
            "web-3.web.default.svc.cluster.local.",
            RecordType::A,
            NXDOMAIN,
            vec![],
            soa.clone(),
        ),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            NOERROR,
            vec![
                "0 33 8080 192-0-2-12.web.default.svc.cluster.local.",
                "0 33 8080 web-0.web.default.svc.cluster.local.",
                "0 33 8080 web-1.web.default.svc.cluster.local.",
            ],
            vec![],
        ),
        (
            "10.2.0.192.in-addr.arpa.",
            RecordType::PTR,
            NOERROR,
            vec!["web-0.web.default.svc.cluster.local."],
            vec![],
        ),
        (
            "ext.default.svc.cluster.local.",
            RecordType::CNAME,
            NOERROR,
            vec!["www.example.org."],
            vec![],
        ),
        (
            "dns-version.cluster.local.",
            RecordType::TXT,
            NOERROR,
            vec!["1.1.0"],
            vec![],
        ),
        (
            "cluster.local.",
            RecordType::NS,
            NOERROR,
            vec!["ns.dns.cluster.local."],
            vec![],
        ),
        (
            "cluster.local.",
            RecordType::A,
            NOERROR,
            vec![],
            soa.clone(),
        ),
        (
            "svc.cluster.local.",
            RecordType::A,
            NOERROR,
            vec![],
            soa.clone(),
        ),
        (
            "pod.cluster.local.",
            RecordType::A,
            NOERROR,
            vec![],
            soa.clone(),
        ),
        (
            "default.svc.cluster.local.",
            RecordType::A,
            NOERROR,
            vec![],
            soa.clone(),
        ),
        (
            "api.default.svc.cluster.local.",
            RecordType::TXT,
            NOERROR,
            vec![],
            soa.clone(),
        ),
        (
            "nope.svc.cluster.local.",
            RecordType::A,
            NXDOMAIN,
            vec![],
            soa.clone(),
        ),
        (
            "missing.default.svc.cluster.local.",
            RecordType::A,
            NXDOMAIN,
            vec![],
            soa.clone(),
        ),
        (
            "*.default.svc.cluster.local.",
            RecordType::A,
            NXDOMAIN,
            vec![],
            soa.clone(),
        ),
        (
            "any.default.svc.cluster.local.",
            RecordType::A,
            NXDOMAIN,
            vec![],
            soa.clone(),
        ),
        (
            "1-2-3-4.default.pod.cluster.local.",
            RecordType::A,
            NXDOMAIN,
            vec![],
            soa.clone(),
        ),
    ];
    for (qname, qtype, rcode, data, authority) in rows {
        let got = ask(&zone, qname, qtype);
        let expected = (
            rcode,
            data.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            authority,
        );
        assert_eq!(got, expected, "{qname} {qtype}");
    }
}

#[test]
fn answer_owner_names_echo_the_question_case() {
    let zone = zone(PodMode::Disabled);
    demo(&zone);
    let Lookup::Answer(a) = zone.lookup(&n("Api.DEFAULT.svc.Cluster.Local."), RecordType::A) else {
        panic!("expected an answer")
    };
    assert!(
        a.answers[0]
            .name
            .eq_case(&n("Api.DEFAULT.svc.Cluster.Local."))
    );
}

#[test]
fn srv_answers_carry_target_addresses_in_additional() {
    let zone = zone(PodMode::Disabled);
    demo(&zone);
    let Lookup::Answer(a) = zone.lookup(
        &n("_http._tcp.web.default.svc.cluster.local."),
        RecordType::SRV,
    ) else {
        panic!("expected an answer")
    };
    let mut additional: Vec<String> = a
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    additional.sort();
    assert_eq!(
        additional,
        vec![
            "192-0-2-12.web.default.svc.cluster.local. 192.0.2.12",
            "web-0.web.default.svc.cluster.local. 192.0.2.10",
            "web-1.web.default.svc.cluster.local. 192.0.2.11",
        ]
    );
}

#[test]
fn an_external_name_leaves_the_zone_at_its_target() {
    let zone = zone(PodMode::Disabled);
    demo(&zone);
    let Lookup::Answer(a) = zone.lookup(&n("ext.default.svc.cluster.local."), RecordType::A) else {
        panic!("expected an answer")
    };
    assert_eq!(a.external_target, Some(n("www.example.org.")));
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
}

#[test]
fn an_external_name_inside_the_zone_is_followed_inside() {
    let zone = zone(PodMode::Disabled);
    demo(&zone);
    zone.apply(service(
        "default",
        "alias",
        json!({"type": "ExternalName", "externalName": "api.default.svc.cluster.local"}),
    ));
    let (rcode, data, _) = ask(&zone, "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rcode, NOERROR);
    assert_eq!(data, vec!["192.0.2.1", "api.default.svc.cluster.local."]);
}

#[test]
fn headless_publish_not_ready_and_no_ready_endpoints() {
    let zone = zone(PodMode::Disabled);
    zone.apply(service(
        "ns1",
        "all",
        json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
    ));
    zone.apply(slice(
        "ns1",
        "all-1",
        "all",
        json!({"endpoints": [
        {"addresses": ["192.0.2.20"], "conditions": {"ready": false}}]}),
    ));
    zone.apply(service("ns1", "none", json!({"clusterIP": "None"})));
    zone.apply(slice(
        "ns1",
        "none-1",
        "none",
        json!({"endpoints": [
        {"addresses": ["192.0.2.21"], "conditions": {"ready": false}}]}),
    ));
    assert_eq!(
        ask(&zone, "all.ns1.svc.cluster.local.", RecordType::A).1,
        vec!["192.0.2.20"]
    );
    assert_eq!(
        ask(&zone, "none.ns1.svc.cluster.local.", RecordType::A).0,
        NXDOMAIN
    );
    assert_eq!(
        ask(&zone, "ns1.svc.cluster.local.", RecordType::A).0,
        NOERROR
    );
}

#[test]
fn deleting_everything_leaves_only_the_static_names() {
    let zone = zone(PodMode::Verified);
    let baseline = zone.name_count();
    demo(&zone);
    zone.apply(pod("default", "p", "192.0.2.50"));
    zone.apply(SourceEvent::Apply(ClusterObject::Namespace(Box::new(
        serde_json::from_value(json!({"metadata": {"name": "empty"}})).unwrap(),
    ))));
    assert!(zone.name_count() > baseline);
    for name in ["api", "web", "ext"] {
        zone.apply(SourceEvent::Delete(key(
            ObjectKind::Service,
            "default",
            name,
        )));
    }
    zone.apply(SourceEvent::Delete(key(
        ObjectKind::EndpointSlice,
        "default",
        "web-abc",
    )));
    zone.apply(SourceEvent::Delete(key(ObjectKind::Pod, "default", "p")));
    zone.apply(SourceEvent::Delete(key(ObjectKind::Namespace, "", "empty")));
    assert_eq!(zone.name_count(), baseline);
    assert_eq!(
        ask(&zone, "default.svc.cluster.local.", RecordType::A).0,
        NXDOMAIN
    );
    assert!(matches!(
        zone.lookup(&n("1.2.0.192.in-addr.arpa."), RecordType::PTR),
        Lookup::NotOurs
    ));
}

#[test]
fn a_slice_that_arrives_before_its_service_is_used_when_the_service_comes() {
    let zone = zone(PodMode::Disabled);
    zone.apply(slice(
        "default",
        "s-1",
        "late",
        json!({"endpoints": [{"addresses": ["192.0.2.30"]}]}),
    ));
    assert_eq!(
        ask(&zone, "late.default.svc.cluster.local.", RecordType::A).0,
        NXDOMAIN
    );
    zone.apply(service("default", "late", json!({"clusterIP": "None"})));
    assert_eq!(
        ask(&zone, "late.default.svc.cluster.local.", RecordType::A).1,
        vec!["192.0.2.30"]
    );
}

#[test]
fn a_slice_relabelled_to_another_service_moves_its_records() {
    let zone = zone(PodMode::Disabled);
    zone.apply(service("default", "a", json!({"clusterIP": "None"})));
    zone.apply(service("default", "b", json!({"clusterIP": "None"})));
    zone.apply(slice(
        "default",
        "s",
        "a",
        json!({"endpoints": [{"addresses": ["192.0.2.40"]}]}),
    ));
    assert_eq!(
        ask(&zone, "a.default.svc.cluster.local.", RecordType::A).1,
        vec!["192.0.2.40"]
    );
    zone.apply(slice(
        "default",
        "s",
        "b",
        json!({"endpoints": [{"addresses": ["192.0.2.40"]}]}),
    ));
    assert_eq!(
        ask(&zone, "b.default.svc.cluster.local.", RecordType::A).1,
        vec!["192.0.2.40"]
    );
    // The endpoints that left `a` linger for the grace, then go.
    assert_eq!(
        ask(&zone, "a.default.svc.cluster.local.", RecordType::A).1,
        vec!["192.0.2.40"]
    );
    zone.expire_endpoints(Instant::now() + ENDPOINT_GRACE);
    assert_eq!(
        ask(&zone, "a.default.svc.cluster.local.", RecordType::A).0,
        NXDOMAIN
    );
}

/// A headless Service `db` with hostnamed endpoints, for the slice-move tests.
fn endpoints(ips: &[(&str, &str)]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = ips
        .iter()
        .map(|(ip, host)| json!({"addresses": [ip], "hostname": host}))
        .collect();
    json!({
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

fn a_records(zone: &Zone, name: &str) -> (ResponseCode, Vec<String>) {
    let (rcode, data, _) = ask(zone, name, RecordType::A);
    (rcode, data)
}

fn ok(ips: &[&str]) -> (ResponseCode, Vec<String>) {
    (NOERROR, ips.iter().map(|s| s.to_string()).collect())
}

#[test]
fn an_endpoint_moving_between_slices_never_vanishes_whatever_the_order() {
    let zone = zone(PodMode::Disabled);
    zone.apply(service("default", "db", json!({"clusterIP": "None"})));
    zone.apply(slice(
        "default",
        "db-a",
        "db",
        endpoints(&[("192.0.2.1", "db-0"), ("192.0.2.2", "db-1")]),
    ));
    zone.apply(slice("default", "db-b", "db", endpoints(&[])));
    let svc = "db.default.svc.cluster.local.";
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));

    // A's update first: db-1 left A and is not in B yet. Nothing vanishes meanwhile.
    zone.apply(slice(
        "default",
        "db-a",
        "db",
        endpoints(&[("192.0.2.1", "db-0")]),
    ));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));
    assert_eq!(
        a_records(&zone, "db-1.db.default.svc.cluster.local."),
        ok(&["192.0.2.2"])
    );
    assert_eq!(
        ask(&zone, "2.2.0.192.in-addr.arpa.", RecordType::PTR).1,
        vec!["db-1.db.default.svc.cluster.local."]
    );
    let srv = ask(
        &zone,
        "_http._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .1;
    assert_eq!(srv.len(), 2, "{srv:?}");
    // Then B's: db-1 is B's now (its version counts: a new hostname shows at once).
    zone.apply(slice(
        "default",
        "db-b",
        "db",
        endpoints(&[("192.0.2.2", "db-1b")]),
    ));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));
    assert_eq!(
        a_records(&zone, "db-1b.db.default.svc.cluster.local."),
        ok(&["192.0.2.2"])
    );
    assert_eq!(
        a_records(&zone, "db-1.db.default.svc.cluster.local.").0,
        NXDOMAIN,
        "the lingering copy is dropped as soon as a slice has the address again"
    );
    // The grace ending changes nothing: the endpoint is B's.
    assert_eq!(zone.expire_endpoints(Instant::now() + ENDPOINT_GRACE), None);
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));

    // The other order (B gains db-0, then A loses it): never more than one record per address.
    zone.apply(slice(
        "default",
        "db-b",
        "db",
        endpoints(&[("192.0.2.2", "db-1b"), ("192.0.2.1", "db-0")]),
    ));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));
    zone.apply(slice("default", "db-a", "db", endpoints(&[])));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));

    // A whole slice deleted before its replacement is created: the same.
    zone.apply(SourceEvent::Delete(key(
        ObjectKind::EndpointSlice,
        "default",
        "db-b",
    )));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));
    zone.apply(slice(
        "default",
        "db-c",
        "db",
        endpoints(&[("192.0.2.1", "db-0"), ("192.0.2.2", "db-1b")]),
    ));
    assert_eq!(zone.expire_endpoints(Instant::now() + ENDPOINT_GRACE), None);
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));
}

#[test]
fn deleting_what_the_zone_does_not_hold_changes_nothing() {
    let zone = zone(PodMode::Verified);
    demo(&zone);
    let (serial, generation) = (zone.soa().data.to_string(), zone.generation());
    for kind in [
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::Pod,
        ObjectKind::Namespace,
    ] {
        zone.apply(SourceEvent::Delete(key(kind, "default", "never-seen")));
    }
    assert_eq!(zone.generation(), generation, "prebuilt answers kept");
    assert_eq!(zone.soa().data.to_string(), serial, "serial unchanged");

    // A delete of what the zone holds still moves both.
    zone.apply(SourceEvent::Delete(key(
        ObjectKind::Service,
        "default",
        "web",
    )));
    assert!(zone.generation() > generation);
    assert_eq!(
        a_records(&zone, "web.default.svc.cluster.local.").0,
        NXDOMAIN
    );
}

#[test]
fn a_removed_endpoint_lingers_for_the_grace_only() {
    let zone = zone(PodMode::Disabled);
    zone.apply(service("default", "db", json!({"clusterIP": "None"})));
    zone.apply(slice(
        "default",
        "db-a",
        "db",
        endpoints(&[("192.0.2.1", "db-0"), ("192.0.2.2", "db-1")]),
    ));
    let svc = "db.default.svc.cluster.local.";
    let serial = zone.soa().data.to_string();
    let removed_at = Instant::now();
    zone.apply(slice(
        "default",
        "db-a",
        "db",
        endpoints(&[("192.0.2.1", "db-0")]),
    ));
    let due = zone
        .expire_endpoints(removed_at)
        .expect("a grace is pending");
    assert!(due >= removed_at + ENDPOINT_GRACE, "{due:?}");
    assert!(due <= Instant::now() + ENDPOINT_GRACE);
    // Half-way: still there.
    zone.expire_endpoints(removed_at + ENDPOINT_GRACE / 2);
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));
    // An unrelated change meanwhile does not end it early.
    zone.apply(service(
        "default",
        "other",
        json!({"clusterIP": "192.0.2.99"}),
    ));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1", "192.0.2.2"]));
    // Over: gone, everywhere, and the serial moved.
    assert_eq!(zone.expire_endpoints(due), None);
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1"]));
    assert_eq!(
        a_records(&zone, "db-1.db.default.svc.cluster.local.").0,
        NXDOMAIN
    );
    assert!(matches!(
        zone.lookup(&n("2.2.0.192.in-addr.arpa."), RecordType::PTR),
        Lookup::NotOurs
    ));
    assert_ne!(zone.soa().data.to_string(), serial);

    // The last endpoint removed: the name lingers, then is NXDOMAIN.
    zone.apply(SourceEvent::Delete(key(
        ObjectKind::EndpointSlice,
        "default",
        "db-a",
    )));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1"]));
    zone.expire_endpoints(Instant::now() + ENDPOINT_GRACE);
    assert_eq!(a_records(&zone, svc).0, NXDOMAIN);
    assert_eq!(
        a_records(&zone, "db-0.db.default.svc.cluster.local.").0,
        NXDOMAIN
    );

    // A Service deleted takes its lingering endpoints with it at once.
    zone.apply(slice(
        "default",
        "db-a",
        "db",
        endpoints(&[("192.0.2.1", "db-0")]),
    ));
    zone.apply(slice("default", "db-a", "db", endpoints(&[])));
    assert_eq!(a_records(&zone, svc), ok(&["192.0.2.1"]));
    zone.apply(SourceEvent::Delete(key(
        ObjectKind::Service,
        "default",
        "db",
    )));
    assert_eq!(a_records(&zone, svc).0, NXDOMAIN);
}

#[test]
fn lingering_endpoints_are_kept_per_service_and_queued_once_per_removal() {
    let zone = zone(PodMode::Disabled);
    // A large zone, none of it lingering.
    for i in 0..2000 {
        let name = format!("s{i}");
        zone.apply(service("big", &name, json!({"clusterIP": "None"})));
        zone.apply(slice(
            "big",
            &format!("{name}-a"),
            &name,
            endpoints(&[(&format!("10.1.{}.{}", i / 250, i % 250 + 1), "h")]),
        ));
    }
    zone.apply(service("default", "db", json!({"clusterIP": "None"})));
    zone.apply(slice(
        "default",
        "db-a",
        "db",
        endpoints(&[("192.0.2.1", "db-0"), ("192.0.2.2", "db-1")]),
    ));
    zone.apply(slice(
        "default",
        "db-a",
        "db",
        endpoints(&[("192.0.2.1", "db-0")]),
    ));
    // A ClusterIP Service's endpoints are not in its answers: their churn queues nothing.
    zone.apply(service(
        "default",
        "web",
        json!({"clusterIP": "192.0.2.80"}),
    ));
    zone.apply(slice(
        "default",
        "web-a",
        "web",
        endpoints(&[("192.0.2.81", "w-0")]),
    ));
    zone.apply(slice("default", "web-a", "web", endpoints(&[])));
    let state = zone.lock();
    // Only the one headless Service carries lingering endpoints; one expiry is queued for it.
    assert_eq!(state.expiries.len(), 1);
    assert_eq!(
        state
            .services
            .values()
            .filter(|e| !e.lingering.is_empty())
            .count(),
        1
    );
}

#[test]
fn pod_records_follow_the_pods_mode() {
    let verified = zone(PodMode::Verified);
    verified.apply(pod("default", "p", "192.0.2.50"));
    verified.apply(pod("default", "p6", "2001:db8::50"));
    assert_eq!(
        ask(
            &verified,
            "192-0-2-50.default.pod.cluster.local.",
            RecordType::A
        )
        .1,
        vec!["192.0.2.50"]
    );
    assert_eq!(
        ask(
            &verified,
            "2001-db8--50.default.pod.cluster.local.",
            RecordType::AAAA
        )
        .1,
        vec!["2001:db8::50"]
    );
    assert_eq!(
        ask(
            &verified,
            "192-0-2-51.default.pod.cluster.local.",
            RecordType::A
        )
        .0,
        NXDOMAIN
    );
    assert_eq!(
        ask(
            &verified,
            "192-0-2-50.other.pod.cluster.local.",
            RecordType::A
        )
        .0,
        NXDOMAIN
    );
    assert_eq!(
        ask(
            &verified,
            "192-0-2-50.default.pod.cluster.local.",
            RecordType::AAAA
        ),
        (NOERROR, vec![], vec![RecordType::SOA])
    );

    let insecure = zone(PodMode::Insecure);
    insecure.apply(service("default", "api", json!({"clusterIP": "192.0.2.1"})));
    assert_eq!(
        ask(
            &insecure,
            "192-0-2-99.default.pod.cluster.local.",
            RecordType::A
        )
        .1,
        vec!["192.0.2.99"]
    );
    assert_eq!(
        ask(
            &insecure,
            "192-0-2-99.nosuchns.pod.cluster.local.",
            RecordType::A
        )
        .0,
        NXDOMAIN
    );
    assert_eq!(
        ask(
            &insecure,
            "not-an-ip.default.pod.cluster.local.",
            RecordType::A
        )
        .0,
        NXDOMAIN
    );
    assert_eq!(
        ask(&insecure, "default.pod.cluster.local.", RecordType::A).0,
        NOERROR
    );
}

#[test]
fn before_the_initial_sync_a_missing_name_is_not_an_nxdomain() {
    let zone = Zone::new(
        ZoneConfig {
            origin: n("cluster.local."),
            ttl: 5,
            pods: PodMode::Disabled,
        },
        Arc::new(Metrics::new()),
    );
    assert!(matches!(
        zone.lookup(&n("x.default.svc.cluster.local."), RecordType::A),
        Lookup::NotSynced
    ));
    assert!(matches!(
        zone.lookup(&n("www.example.org."), RecordType::A),
        Lookup::NotOurs
    ));
    assert!(matches!(
        zone.lookup(&n("cluster.local."), RecordType::AXFR),
        Lookup::Refused
    ));
}

#[test]
fn a_bad_object_is_skipped_and_counted() {
    let zone = zone(PodMode::Disabled);
    zone.apply(service("default", "bad", json!({"clusterIP": "not-an-ip"})));
    zone.apply(service(
        "default",
        "good",
        json!({"clusterIP": "192.0.2.7"}),
    ));
    assert_eq!(
        ask(&zone, "bad.default.svc.cluster.local.", RecordType::A).0,
        NXDOMAIN
    );
    assert_eq!(
        ask(&zone, "good.default.svc.cluster.local.", RecordType::A).1,
        vec!["192.0.2.7"]
    );
    assert_eq!(
        zone.metrics
            .objects_rejected
            .with_label_values(&["Service", "invalid_address"])
            .get(),
        1
    );
}

#[test]
fn srv_weights_share_100_as_coredns_does() {
    assert_eq!(records::srv_weight(1), 100);
    assert_eq!(records::srv_weight(2), 50);
    assert_eq!(records::srv_weight(3), 33);
    assert_eq!(records::srv_weight(100), 1);
    assert_eq!(records::srv_weight(1000), 1);
}

#[test]
fn soa_ttl_is_capped_at_300_while_its_minimum_follows_the_zone_ttl() {
    for (ttl, record_ttl) in [(0, 0), (5, 5), (300, 300), (3600, 300)] {
        let zone = Zone::new(
            ZoneConfig {
                origin: n("cluster.local."),
                ttl,
                pods: PodMode::Disabled,
            },
            Arc::new(Metrics::new()),
        );
        let soa = zone.soa();
        assert_eq!(soa.ttl, record_ttl, "ttl {ttl}: SOA record TTL");
        let RData::SOA(data) = &soa.data else {
            panic!("an SOA")
        };
        assert_eq!(data.minimum, ttl, "ttl {ttl}: SOA minimum");
    }
}

#[test]
fn only_names_that_become_labels_must_be_labels() {
    let zone = zone(PodMode::Verified);
    // Pod names may be dotted subdomains: the pod is still known for verified mode.
    zone.apply(pod("default", "web.0.example", "192.0.2.60"));
    assert_eq!(
        ask(
            &zone,
            "192-0-2-60.default.pod.cluster.local.",
            RecordType::A
        )
        .0,
        NOERROR
    );
    // A Service whose name is not a DNS label is rejected, not served.
    zone.apply(service(
        "default",
        "Bad_Name",
        json!({"clusterIP": "192.0.2.61", "ports": [{"port": 80}]}),
    ));
    assert_eq!(
        ask(&zone, "bad_name.default.svc.cluster.local.", RecordType::A).0,
        NXDOMAIN
    );
}

#[test]
fn trigger_time_annotation_is_read_in_the_controllers_formats() {
    let slice_with = |annotation: Option<&str>| -> records::SliceInfo {
        let mut metadata = json!({"name": "s", "namespace": "ns",
            "labels": {"kubernetes.io/service-name": "svc"}});
        if let Some(value) = annotation {
            metadata["annotations"] = json!({records::LAST_CHANGE_TRIGGER_TIME: value});
        }
        let slice = serde_json::from_value(json!({
            "metadata": metadata, "addressType": "IPv4", "endpoints": [],
        }))
        .unwrap();
        records::slice_info(&slice).unwrap()
    };
    let at = |secs: u64, nanos: u32| Some(UNIX_EPOCH + Duration::new(secs, nanos));
    // RFC 3339 as the EndpointSlice controller writes it, with and without fractions.
    assert_eq!(
        slice_with(Some("2024-05-01T10:00:05Z"))
            .trigger_time
            .map(TriggerTime::time),
        at(1_714_557_605, 0)
    );
    assert_eq!(
        slice_with(Some("2024-05-01T10:00:05.25Z"))
            .trigger_time
            .map(TriggerTime::time),
        at(1_714_557_605, 250_000_000)
    );
    // Absent or garbage: no latency measured, the slice itself still serves.
    assert_eq!(slice_with(None).trigger_time, None);
    assert_eq!(slice_with(Some("yesterday")).trigger_time, None);
}

#[test]
fn a_batch_rebuilds_each_service_once_and_answers_as_if_applied_one_by_one() {
    let events = || {
        let mut events = vec![service("hl", "big", json!({"clusterIP": "None"}))];
        for s in 0..20 {
            let endpoints: Vec<_> = (0..50)
                .map(|e| json!({"addresses": [format!("10.{s}.0.{e}")]}))
                .collect();
            events.push(slice(
                "hl",
                &format!("big-{s}"),
                "big",
                json!({"endpoints": endpoints}),
            ));
        }
        // Gone again within the batch: lingers for its grace like any removed endpoint.
        events.push(slice(
            "hl",
            "short",
            "big",
            json!({"endpoints": [{"addresses": ["10.99.0.1"]}]}),
        ));
        events.push(SourceEvent::Delete(key(
            ObjectKind::EndpointSlice,
            "hl",
            "short",
        )));
        events
    };
    let one_by_one = zone(PodMode::Disabled);
    for event in events() {
        one_by_one.apply(event);
    }
    let batched = zone(PodMode::Disabled);
    batched.apply_batch(events());
    let name = Name::from_ascii("big.hl.svc.cluster.local.").unwrap();
    let addresses = |zone: &Zone| match zone.lookup(&name, RecordType::A) {
        Lookup::Answer(answer) => {
            let mut ips: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
            ips.sort();
            ips
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(addresses(&batched).len(), 1001);
    assert_eq!(addresses(&batched), addresses(&one_by_one));
    assert_eq!(batched.name_count(), one_by_one.name_count());
    let after_grace = Instant::now() + ENDPOINT_GRACE + Duration::from_secs(1);
    batched.expire_endpoints(after_grace);
    one_by_one.expire_endpoints(after_grace);
    assert_eq!(addresses(&batched).len(), 1000);
    assert!(!addresses(&batched).contains(&"10.99.0.1".to_string()));
    assert_eq!(addresses(&batched), addresses(&one_by_one));
    assert_eq!(batched.name_count(), one_by_one.name_count());
}

#[test]
fn stored_records_give_back_the_record_they_were_made_of() {
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SRV, TXT};
    let target = Name::from_ascii("web-0.web.default.svc.cluster.local.").unwrap();
    let owner = Name::from_ascii("Web.Default.svc.cluster.local.").unwrap();
    let cases = [
        (RData::A(A::new(192, 0, 2, 1)), RecordType::A),
        (
            RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            RecordType::AAAA,
        ),
        (RData::PTR(PTR(target.clone())), RecordType::PTR),
        (RData::CNAME(CNAME(target.clone())), RecordType::CNAME),
        (
            RData::SRV(SRV::new(1, 2, 8080, target.clone())),
            RecordType::SRV,
        ),
        (RData::NS(NS(target.clone())), RecordType::NS),
        (RData::TXT(TXT::new(vec!["1.1.0".into()])), RecordType::TXT),
    ];
    for (data, rtype) in cases {
        let stored = StoredRecord::new(data.clone());
        assert_eq!(stored.record_type(), rtype);
        let record = stored.to_record(&owner, 7);
        assert_eq!(record.data, data, "{rtype}");
        assert_eq!(record.ttl, 7, "the zone's TTL");
        let own = StoredRecord::with_ttl(28800, data.clone()).to_record(&owner, 7);
        assert_eq!((own.data, own.ttl), (data, 28800), "a TTL of its own");
        // The spelling asked for, not a stored one.
        assert_eq!(record.name.to_ascii(), "Web.Default.svc.cluster.local.");
    }
}

#[test]
fn index_keys_are_lower_case_wire_labels_that_give_the_name_back() {
    let mixed = Name::from_ascii("_HTTP._tcp.Web.default.svc.cluster.local.").unwrap();
    let key = NameKey::new(&mixed);
    assert_eq!(
        &*key.0,
        b"\x05_http\x04_tcp\x03web\x07default\x03svc\x07cluster\x05local".as_slice()
    );
    let mut buffer = [0; 255];
    assert_eq!(key_bytes(&mixed.to_lowercase(), &mut buffer), &*key.0);
    assert_eq!(key.to_name(), mixed, "names compare case-insensitively");
    assert!(key.to_name().is_fqdn());
    assert_eq!(NameKey::new(&Name::root()).to_name(), Name::root());
    // The longest name fits the buffer: 127 one-byte labels (254 bytes without the root).
    let longest = Name::from_ascii("a.".repeat(127)).unwrap();
    assert_eq!(key_bytes(&longest, &mut buffer).len(), 254);
    assert_eq!(NameKey::new(&longest).to_name(), longest);
}

/// Every name of the index with its records (owner by owner), for comparing whole zones.
fn index_contents(zone: &Zone) -> BTreeMap<String, Vec<String>> {
    let mut names: BTreeMap<String, Vec<String>> = zone
        .index
        .iter()
        .map(|node| {
            let mut records: Vec<String> = node.records().map(|r| format!("{r:?}")).collect();
            records.sort();
            records.push(format!("{} children", node.children));
            (node.key().to_name().to_string(), records)
        })
        .collect();
    for ent in zone.ents.iter() {
        let name = ent.key().to_name().to_string();
        let entry = vec![format!("empty non-terminal, {} children", ent.value())];
        assert!(names.insert(name, entry).is_none(), "in both maps");
    }
    names
}

#[test]
fn what_a_change_takes_away_leaves_the_index_whether_applied_alone_or_in_a_batch() {
    // The zone keeps no copy of what a Service published: the names to take away are
    // recomputed from its state before the change. Every kind of name a change can drop:
    // a PTR (new ClusterIP), an SRV name and its `_tcp` parent (renamed port), an endpoint
    // name (new hostname), a slice moving to another Service, a Service deleted.
    let history = || {
        vec![
            service(
                "ns",
                "web",
                json!({"clusterIP": "10.0.0.1", "ports": [{"name": "http", "port": 80}]}),
            ),
            service("ns", "hl", json!({"clusterIP": "None"})),
            service("ns", "other", json!({"clusterIP": "None"})),
            service("ns", "gone", json!({"clusterIP": "10.0.0.9"})),
            slice(
                "ns",
                "hl-a",
                "hl",
                endpoints(&[("10.1.0.1", "a"), ("10.1.0.2", "b")]),
            ),
            service(
                "ns",
                "web",
                json!({"clusterIP": "10.0.0.2", "ports": [{"name": "https", "port": 443, "protocol": "UDP"}]}),
            ),
            slice(
                "ns",
                "hl-a",
                "hl",
                endpoints(&[("10.1.0.1", "c"), ("10.1.0.2", "b")]),
            ),
            slice(
                "ns",
                "hl-a",
                "other",
                endpoints(&[("10.1.0.1", "c"), ("10.1.0.2", "b")]),
            ),
            SourceEvent::Delete(key(ObjectKind::Service, "ns", "gone")),
        ]
    };
    let final_state = vec![
        service(
            "ns",
            "web",
            json!({"clusterIP": "10.0.0.2", "ports": [{"name": "https", "port": 443, "protocol": "UDP"}]}),
        ),
        service("ns", "hl", json!({"clusterIP": "None"})),
        service("ns", "other", json!({"clusterIP": "None"})),
        slice(
            "ns",
            "hl-a",
            "other",
            endpoints(&[("10.1.0.1", "c"), ("10.1.0.2", "b")]),
        ),
    ];
    let one_by_one = zone(PodMode::Disabled);
    for event in history() {
        one_by_one.apply(event);
    }
    let batched = zone(PodMode::Disabled);
    batched.apply_batch(history());
    let fresh = zone(PodMode::Disabled);
    fresh.apply_batch(final_state);
    // Endpoints taken away linger for their grace (module documentation); then they go.
    let after_grace = Instant::now() + ENDPOINT_GRACE + Duration::from_secs(1);
    one_by_one.expire_endpoints(after_grace);
    batched.expire_endpoints(after_grace);
    let expected = index_contents(&fresh);
    assert!(expected.contains_key("_https._udp.web.ns.svc.cluster.local."));
    assert_eq!(
        expected["_udp.web.ns.svc.cluster.local."],
        ["empty non-terminal, 1 children"]
    );
    assert!(expected.contains_key("c.other.ns.svc.cluster.local."));
    assert!(!expected.contains_key("_http._tcp.web.ns.svc.cluster.local."));
    assert!(!expected.contains_key("1.0.0.10.in-addr.arpa."));
    assert_eq!(index_contents(&one_by_one), expected);
    assert_eq!(index_contents(&batched), expected);
    assert_eq!(
        one_by_one.metrics.zone_records.get(),
        fresh.metrics.zone_records.get()
    );
    assert_eq!(
        batched.metrics.zone_records.get(),
        fresh.metrics.zone_records.get()
    );
}

#[test]
fn empty_non_terminals_exist_while_they_have_children_and_turn_into_names_and_back() {
    let zone = zone(PodMode::Disabled);
    let names_before = zone.name_count();
    let a = |ip: &str| -> Box<[StoredRecord]> {
        Box::new([StoredRecord::new(RData::A(hickory_proto::rr::rdata::A(
            ip.parse().unwrap(),
        )))])
    };
    let leaf = n("a.b.x.ns.svc.cluster.local.");
    let middle = n("x.ns.svc.cluster.local.");
    let nodata = (NOERROR, vec![], vec![RecordType::SOA]);
    let nxdomain = (NXDOMAIN, vec![], vec![RecordType::SOA]);

    zone.put(&leaf, 7, a("10.0.0.1"));
    assert_eq!(zone.ents.len(), 3, "b.x, x and ns above the leaf");
    assert_eq!(
        ask(&zone, "b.x.ns.svc.cluster.local.", RecordType::A),
        nodata
    );
    assert_eq!(ask(&zone, "x.ns.svc.cluster.local.", RecordType::A), nodata);
    assert_eq!(
        ask(&zone, "c.x.ns.svc.cluster.local.", RecordType::A),
        nxdomain
    );

    // An empty non-terminal that gets records moves into the index with its children.
    zone.put(&middle, 8, a("10.0.0.2"));
    assert!(!zone.ents.contains_key(&*NameKey::new(&middle).0));
    assert_eq!(
        zone.index
            .get(&*NameKey::new(&middle).0)
            .map(|n| n.children),
        Some(1)
    );
    assert_eq!(
        ask(&zone, "x.ns.svc.cluster.local.", RecordType::A),
        (NOERROR, vec!["10.0.0.2".to_string()], vec![])
    );
    assert_eq!(
        ask(&zone, "b.x.ns.svc.cluster.local.", RecordType::A),
        nodata
    );

    // Losing them, it is an empty non-terminal again while the leaf is there.
    zone.remove(&middle, 8);
    assert_eq!(zone.ents.len(), 3);
    assert_eq!(ask(&zone, "x.ns.svc.cluster.local.", RecordType::A), nodata);

    // The last child gone, every empty non-terminal above it goes too.
    zone.remove(&leaf, 7);
    assert!(zone.ents.is_empty());
    assert_eq!(zone.name_count(), names_before);
    assert_eq!(
        ask(&zone, "x.ns.svc.cluster.local.", RecordType::A),
        nxdomain
    );
    assert_eq!(ask(&zone, "ns.svc.cluster.local.", RecordType::A), nxdomain);
    assert_eq!(
        zone.metrics.zone_records.get(),
        2,
        "the static NS and TXT only"
    );
}

#[test]
fn object_ids_share_their_namespace_and_unused_namespace_names_are_swept() {
    let zone = zone(PodMode::Disabled);
    zone.apply_batch([
        service("team-a", "one", json!({"clusterIP": "10.0.0.1"})),
        service("team-a", "two", json!({"clusterIP": "10.0.0.2"})),
        slice("team-a", "one-x", "one", endpoints(&[("10.1.0.1", "h")])),
    ]);
    let mut state = zone.lock();
    let namespaces: Vec<Arc<str>> = state
        .services
        .keys()
        .chain(state.slices.keys())
        .map(|id| id.namespace.clone())
        .collect();
    assert_eq!(namespaces.len(), 3);
    assert!(namespaces.iter().all(|ns| Arc::ptr_eq(ns, &namespaces[0])));
    drop(namespaces);
    // Ids made and dropped (objects of namespaces that are gone) leave no name behind for
    // long: the set is swept whenever it doubles.
    for n in 0..1000 {
        state.object_id(&format!("gone-{n}"), "x");
    }
    assert!(
        state.namespace_names.len() <= 130,
        "{}",
        state.namespace_names.len()
    );
    assert!(state.namespace_names.contains("team-a"), "still in use");
}

#[test]
fn a_source_that_lists_again_deletes_through_the_zone_what_its_list_did_not_bring() {
    let zone = zone(PodMode::Verified);
    let namespace = |name: &str| {
        SourceEvent::Apply(ClusterObject::Namespace(Box::new(
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )))
    };
    zone.apply_batch([
        service("a", "kept", json!({"clusterIP": "10.0.0.1"})),
        service("a", "gone", json!({"clusterIP": "10.0.0.2"})),
        service("b", "other", json!({"clusterIP": "10.0.0.3"})),
        // A slice whose Service is not there: the zone holds an entry, not a Service.
        slice("a", "orphan-1", "orphan", endpoints(&[("10.1.0.1", "x")])),
        slice("a", "kept-1", "kept", endpoints(&[("10.1.0.2", "y")])),
        pod("a", "p", "10.2.0.1"),
        namespace("a"),
        namespace("c"),
    ]);
    let listed_only =
        |names: &'static [&'static str]| move |_: &str, name: &str| names.contains(&name);
    // A watch of namespace "a" listed "kept" only: "gone" goes, "b/other" is not its own,
    // and the Service entry the orphan slice made is no Service.
    let deleted = zone.delete_unlisted(ObjectKind::Service, Some("a"), &listed_only(&["kept"]));
    assert_eq!(deleted, 1);
    assert_eq!(
        a_records(&zone, "gone.a.svc.cluster.local.").0,
        ResponseCode::NXDomain
    );
    assert_eq!(
        a_records(&zone, "kept.a.svc.cluster.local."),
        ok(&["10.0.0.1"])
    );
    assert_eq!(
        a_records(&zone, "other.b.svc.cluster.local."),
        ok(&["10.0.0.3"])
    );
    // Every namespace's slices, pods and Namespace objects, each by its own kind.
    let deleted = zone.delete_unlisted(ObjectKind::EndpointSlice, None, &listed_only(&["kept-1"]));
    assert_eq!(deleted, 1);
    assert_eq!(
        zone.unlisted(ObjectKind::EndpointSlice, None, &|_, _| false),
        [key(ObjectKind::EndpointSlice, "a", "kept-1")]
    );
    assert_eq!(
        a_records(&zone, "10-2-0-1.a.pod.cluster.local."),
        ok(&["10.2.0.1"])
    );
    assert_eq!(
        zone.delete_unlisted(ObjectKind::Pod, None, &listed_only(&["p"])),
        0
    );
    assert_eq!(
        zone.delete_unlisted(ObjectKind::Pod, None, &listed_only(&[])),
        1
    );
    assert_eq!(
        a_records(&zone, "10-2-0-1.a.pod.cluster.local.").0,
        ResponseCode::NXDomain
    );
    assert_eq!(a_records(&zone, "c.svc.cluster.local."), ok(&[]));
    let deleted = zone.delete_unlisted(ObjectKind::Namespace, None, &|namespace, name| {
        assert_eq!(namespace, "", "a Namespace has no namespace");
        name == "a"
    });
    assert_eq!(
        deleted, 1,
        "c only: b exists through its Service, not an object"
    );
    assert_eq!(
        a_records(&zone, "c.svc.cluster.local.").0,
        ResponseCode::NXDomain
    );
    assert_eq!(a_records(&zone, "b.svc.cluster.local."), ok(&[]));
    assert_eq!(
        zone.unlisted(ObjectKind::Namespace, None, &|_, _| false),
        [key(ObjectKind::Namespace, "", "a")]
    );
}

#[test]
fn a_name_keeps_each_owners_records_whether_it_has_one_owner_or_several() {
    let records = |ip: &str| -> Box<[StoredRecord]> {
        Box::new([StoredRecord::new(RData::A(hickory_proto::rr::rdata::A(
            ip.parse().unwrap(),
        )))])
    };
    let owners_of = |owners: &Owners| -> Vec<(OwnerId, usize)> {
        owners.iter().map(|(o, r)| (*o, r.len())).collect()
    };
    let mut owners = Owners::One((7, records("10.0.0.1")));
    assert_eq!(
        owners.replace(7, Box::new([])),
        1,
        "its own records replaced"
    );
    assert_eq!(
        owners_of(&owners),
        [(7, 0)],
        "an owner without records stays"
    );
    assert_eq!(owners.replace(8, records("10.0.0.2")), 0);
    assert_eq!(owners.replace(9, records("10.0.0.3")), 0);
    assert_eq!(owners_of(&owners), [(7, 0), (8, 1), (9, 1)]);
    assert_eq!(owners.replace(8, records("10.0.0.4")), 1);
    assert_eq!(owners.remove(42), 0, "not an owner");
    assert_eq!(owners.remove(7), 0);
    assert_eq!(owners.remove(9), 1);
    assert!(
        matches!(owners, Owners::One((8, _))),
        "back inline: {owners:?}"
    );
    assert_eq!(owners.remove(8), 1);
    assert!(owners.is_empty());
    assert_eq!(owners.replace(5, records("10.0.0.5")), 0);
    assert!(matches!(owners, Owners::One((5, _))));
}

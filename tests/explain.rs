//! `clusterdns explain` and `clusterdns dump` against a running server (issue 9): the real
//! binary serves a manifest directory, the CLI asks its admin endpoint, and what the
//! explanation says is checked against what the server answers over DNS.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{FakeUpstream, Server, UpstreamMode, query};

/// A small cluster of our own (the shared fixtures have no terminating endpoint), with a
/// namespace `shop` whose names are close to typos worth testing.
const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Service
metadata:
  name: orders
  namespace: shop
  resourceVersion: "4711"
spec:
  clusterIP: 192.0.2.80
  ports:
  - name: http
    port: 80
    protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: shop
spec:
  clusterIP: None
  ports:
  - name: pg
    port: 5432
---
apiVersion: v1
kind: Service
metadata:
  name: ext
  namespace: shop
spec:
  type: ExternalName
  externalName: www.example.org
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: shop
  resourceVersion: "815"
  labels:
    kubernetes.io/service-name: db
addressType: IPv4
ports:
- name: pg
  port: 5432
  protocol: TCP
endpoints:
- addresses: ["192.0.2.90"]
  hostname: db-0
  conditions:
    ready: true
- addresses: ["192.0.2.91"]
  hostname: db-1
  conditions:
    ready: false
- addresses: ["192.0.2.92"]
  hostname: db-2
  conditions:
    ready: false
    serving: true
    terminating: true
"#;

struct Shop {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Shop {
    fn start(upstream: Option<SocketAddr>, extra: &[&str]) -> Shop {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("shop.yaml"), SHOP).expect("write manifest");
        let server = Server::manifests(dir.path(), upstream, extra);
        Shop { server, _dir: dir }
    }

    fn admin_url(&self) -> String {
        admin_url(&self.server)
    }

    fn explain_json(&self, args: &[&str]) -> Value {
        let out = explain_cli(&self.admin_url(), args, true);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }

    fn explain_text(&self, args: &[&str]) -> String {
        explain_cli(&self.admin_url(), args, false)
    }
}

fn admin_url(server: &Server) -> String {
    format!("http://{}", server.admin.expect("admin listener"))
}

fn explain_cli(url: &str, args: &[&str], json: bool) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clusterdns"));
    command.arg("explain").args(args).args(["--server", url]);
    if json {
        command.arg("--json");
    }
    let out = command.output().expect("run clusterdns explain");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "explain {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect()
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn a_clusterip_service_is_explained_with_the_service_that_produced_it() {
    let shop = Shop::start(None, &[]);
    let e = shop.explain_json(&["orders.shop.svc.cluster.local"]);
    assert_eq!(e["path"], "zone");
    assert_eq!(e["rcode"], "NOERROR");
    assert_eq!(e["authoritative"], true);
    let answers = e["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 1, "{e:#}");
    assert_eq!(
        answers[0]["record"],
        "orders.shop.svc.cluster.local. 5 IN A 192.0.2.80"
    );
    let source = &answers[0]["source"];
    assert_eq!(source["kind"], "Service");
    assert_eq!(source["namespace"], "shop");
    assert_eq!(source["name"], "orders");
    assert_eq!(source["resource_version"], "4711");
    assert!(
        source["file"]
            .as_str()
            .expect("file")
            .ends_with("shop.yaml"),
        "{source}"
    );
    let changed = source["changed_unix"].as_u64().expect("changed_unix");
    assert!(
        changed <= unix_now() && changed + 60 > unix_now(),
        "{changed}"
    );
    assert!(e["excluded"].as_array().expect("excluded").is_empty());
    assert_eq!(e["data"]["synced"], true);
    assert_eq!(
        e["data"]["api_watches"],
        serde_json::json!([]),
        "not the API source"
    );
    assert!(
        e["data"]["source"]
            .as_str()
            .expect("source")
            .starts_with("manifests "),
        "{e:#}"
    );

    // The same answer the server gives over DNS.
    let dns = shop
        .server
        .udp(&query("orders.shop.svc.cluster.local.", RecordType::A));
    assert_eq!(
        support::rdata(&dns.answers, RecordType::A),
        ["192.0.2.80"],
        "explain and DNS agree"
    );

    let text = shop.explain_text(&["orders.shop.svc.cluster.local"]);
    assert!(text.contains("NOERROR from the cluster zone"), "{text}");
    assert!(
        text.contains("<- Service shop/orders resourceVersion 4711 from "),
        "{text}"
    );
}

#[test]
fn a_headless_service_names_its_not_ready_and_terminating_endpoints_with_their_rules() {
    let shop = Shop::start(None, &[]);
    let e = shop.explain_json(&["db.shop.svc.cluster.local", "A"]);
    assert_eq!(e["rcode"], "NOERROR");
    let answers = e["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), 1, "only the ready endpoint: {e:#}");
    assert_eq!(
        answers[0]["record"],
        "db.shop.svc.cluster.local. 5 IN A 192.0.2.90"
    );
    assert_eq!(answers[0]["source"]["kind"], "EndpointSlice");
    assert_eq!(answers[0]["source"]["name"], "db-abc");
    assert_eq!(answers[0]["source"]["resource_version"], "815");
    assert_eq!(e["service"]["kind"], "Service");
    assert_eq!(e["service"]["name"], "db");

    let excluded = e["excluded"].as_array().expect("excluded");
    let by_address: BTreeMap<&str, &Value> = excluded
        .iter()
        .map(|x| (x["address"].as_str().expect("address"), x))
        .collect();
    assert_eq!(
        by_address.keys().copied().collect::<Vec<_>>(),
        ["192.0.2.91", "192.0.2.92"],
        "{e:#}"
    );
    let not_ready = by_address["192.0.2.91"];
    assert_eq!(not_ready["hostname"], "db-1");
    assert_eq!(not_ready["reason"], "not_ready");
    assert_eq!(not_ready["slice"], "shop/db-abc");
    assert!(
        not_ready["rule"]
            .as_str()
            .expect("rule")
            .contains("publishNotReadyAddresses")
    );
    let terminating = by_address["192.0.2.92"];
    assert_eq!(terminating["hostname"], "db-2");
    assert_eq!(terminating["reason"], "terminating");

    // Asking for the not-ready endpoint by name says why it is NXDOMAIN.
    let e = shop.explain_json(&["db-1.db.shop.svc.cluster.local"]);
    assert_eq!(e["rcode"], "NXDOMAIN");
    assert_eq!(e["nxdomain"]["expected"], "endpoint");
    assert_eq!(e["nxdomain"]["label"], "db-1");
    assert_eq!(strings(&e["nxdomain"]["suggestions"]), ["db-0"]);
    let notes = strings(&e["notes"]).join("\n");
    assert!(
        notes.contains("endpoint 'db-1' exists (192.0.2.91) but is left out: not ready"),
        "{notes}"
    );

    let text = shop.explain_text(&["db.shop.svc.cluster.local"]);
    assert!(text.contains("endpoints left out:"), "{text}");
    assert!(
        text.contains("192.0.2.92 hostname db-2 (EndpointSlice shop/db-abc): terminating"),
        "{text}"
    );
}

#[test]
fn typos_in_service_and_namespace_name_the_failed_label_and_suggest_close_names() {
    let shop = Shop::start(None, &[]);
    let e = shop.explain_json(&["order.shop.svc.cluster.local"]);
    assert_eq!(e["rcode"], "NXDOMAIN");
    let failed = &e["nxdomain"];
    assert_eq!(failed["expected"], "service");
    assert_eq!(failed["label"], "order");
    assert_eq!(failed["within"], "shop");
    assert_eq!(failed["message"], "no service 'order' in namespace 'shop'");
    assert_eq!(strings(&failed["suggestions"]), ["orders"]);
    let text = shop.explain_text(&["order.shop.svc.cluster.local"]);
    assert!(
        text.contains(
            "NXDOMAIN because: no service 'order' in namespace 'shop'; did you mean 'orders'?"
        ),
        "{text}"
    );

    let e = shop.explain_json(&["orders.shpo.svc.cluster.local"]);
    assert_eq!(e["rcode"], "NXDOMAIN");
    let failed = &e["nxdomain"];
    assert_eq!(failed["expected"], "namespace");
    assert_eq!(failed["label"], "shpo");
    assert_eq!(failed["message"], "no namespace 'shpo'");
    assert_eq!(strings(&failed["suggestions"]), ["shop"]);

    // What the server answers over DNS is the NXDOMAIN explained.
    let dns = shop
        .server
        .udp(&query("orders.shpo.svc.cluster.local.", RecordType::A));
    assert_eq!(dns.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn an_nxdomain_under_a_real_namespace_and_a_nodata_say_what_exists() {
    let shop = Shop::start(None, &[]);
    let e = shop.explain_json(&["payments.shop.svc.cluster.local"]);
    assert_eq!(e["rcode"], "NXDOMAIN");
    assert_eq!(
        e["nxdomain"]["message"],
        "no service 'payments' in namespace 'shop'"
    );
    assert!(strings(&e["nxdomain"]["suggestions"]).is_empty(), "{e:#}");
    assert_eq!(e["authority"].as_array().expect("authority").len(), 1);
    assert!(
        e["authority"][0].as_str().expect("soa").starts_with(
            "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
        )
    );

    let e = shop.explain_json(&["orders.shop.svc.cluster.local", "AAAA"]);
    assert_eq!(e["rcode"], "NOERROR");
    assert!(e["answers"].as_array().expect("answers").is_empty());
    assert_eq!(strings(&e["types_present"]), ["A", "SRV"]);
    let text = shop.explain_text(&["orders.shop.svc.cluster.local", "AAAA"]);
    assert!(
        text.contains("NODATA: the name has A, SRV records, no AAAA"),
        "{text}"
    );
    let dns = shop
        .server
        .udp(&query("orders.shop.svc.cluster.local.", RecordType::AAAA));
    assert_eq!(dns.metadata.response_code, ResponseCode::NoError);
    assert!(dns.answers.is_empty());

    // The namespace itself exists (NODATA) and holds nothing.
    let e = shop.explain_json(&["shop.svc.cluster.local"]);
    assert_eq!(e["rcode"], "NOERROR");
    assert!(strings(&e["types_present"]).is_empty());
    assert!(
        strings(&e["notes"])
            .join("\n")
            .contains("exists but holds no records"),
        "{e:#}"
    );
}

#[test]
fn a_cached_upstream_name_shows_its_cache_entry_and_explaining_asks_nobody() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let shop = Shop::start(Some(upstream.addr), &[]);
    let dns = shop.server.udp(&query("www.example.org.", RecordType::A));
    assert_eq!(dns.metadata.response_code, ResponseCode::NoError);
    assert_eq!(upstream.count(), 1);
    let requests_before = shop.server.metric("coredns_dns_requests_total", "");

    let e = shop.explain_json(&["www.example.org"]);
    assert_eq!(e["path"], "upstream");
    assert_eq!(e["rcode"], "NOERROR");
    assert_eq!(e["authoritative"], false);
    let up = &e["upstream"];
    assert_eq!(up["name"], "www.example.org.");
    assert_eq!(up["stub_domain"], Value::Null);
    assert_eq!(up["upstreams"][0]["address"], upstream.addr.to_string());
    assert_eq!(up["upstreams"][0]["healthy"], true);
    assert_eq!(up["resolved"], false);
    let cache = &up["cache"];
    assert_eq!(cache["kind"], "positive");
    assert_eq!(cache["rcode"], "NOERROR");
    assert_eq!(cache["stale"], false);
    assert_eq!(cache["ttl_secs"], 300);
    let remaining = cache["remaining_secs"].as_u64().expect("remaining");
    assert!((290..=300).contains(&remaining), "{cache}");
    assert!(cache["age_secs"].as_u64().expect("age") <= 10);
    assert_eq!(
        strings(&cache["records"]),
        [format!("www.example.org. {remaining} IN A 203.0.113.53")]
    );

    assert_eq!(upstream.count(), 1, "explaining sends no upstream query");
    assert_eq!(
        shop.server.metric("coredns_dns_requests_total", ""),
        requests_before,
        "explaining is not a DNS request"
    );
    let text = shop.explain_text(&["www.example.org"]);
    assert!(text.contains("cache: positive NOERROR entry"), "{text}");
    assert!(text.contains("(fresh)"), "{text}");
}

#[test]
fn an_upstream_name_not_in_cache_is_not_resolved_unless_asked_to() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let shop = Shop::start(Some(upstream.addr), &[]);
    let e = shop.explain_json(&["api.example.org"]);
    assert_eq!(e["path"], "upstream");
    assert_eq!(e["rcode"], Value::Null, "nobody asked: unknown");
    assert_eq!(e["upstream"]["cache"], Value::Null);
    assert!(
        strings(&e["notes"]).join("\n").contains("not in the cache"),
        "{e:#}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(upstream.count(), 0, "no upstream query without --resolve");
    let e = shop.explain_json(&["api.example.org"]);
    assert_eq!(e["upstream"]["cache"], Value::Null, "and no cache fill");

    let e = shop.explain_json(&["api.example.org", "--resolve"]);
    assert_eq!(e["rcode"], "NOERROR");
    assert_eq!(e["upstream"]["resolved"], true);
    assert_eq!(e["upstream"]["served_from"], "upstream");
    assert_eq!(
        e["answers"][0]["record"],
        "api.example.org. 300 IN A 203.0.113.53"
    );
    assert_eq!(upstream.count(), 1, "--resolve asks the upstream once");
}

#[test]
fn an_external_name_shows_its_cname_and_the_upstream_path_of_the_target() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let shop = Shop::start(Some(upstream.addr), &[]);
    let e = shop.explain_json(&["ext.shop.svc.cluster.local"]);
    assert_eq!(e["path"], "zone");
    assert_eq!(
        e["answers"][0]["record"],
        "ext.shop.svc.cluster.local. 5 IN CNAME www.example.org."
    );
    assert_eq!(e["answers"][0]["source"]["name"], "ext");
    assert_eq!(e["upstream"]["name"], "www.example.org.");
    assert_eq!(e["upstream"]["cache"], Value::Null);
    assert!(
        strings(&e["notes"])
            .join("\n")
            .contains("the CNAME chain leaves the zone at www.example.org."),
        "{e:#}"
    );
    assert_eq!(upstream.count(), 0);

    let e = shop.explain_json(&["ext.shop.svc.cluster.local", "--resolve"]);
    assert_eq!(e["rcode"], "NOERROR");
    let records: Vec<&str> = e["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .map(|a| a["record"].as_str().expect("record"))
        .collect();
    assert_eq!(
        records,
        [
            "ext.shop.svc.cluster.local. 5 IN CNAME www.example.org.",
            "www.example.org. 300 IN A 203.0.113.53"
        ]
    );
    assert_eq!(e["upstream"]["resolved"], true);
    assert_eq!(upstream.count(), 1);
    // The same as a client gets.
    let dns = shop
        .server
        .udp(&query("ext.shop.svc.cluster.local.", RecordType::A));
    assert_eq!(dns.answers.len(), 2);
    assert_eq!(
        support::rdata(&dns.answers, RecordType::A),
        ["203.0.113.53"]
    );
}

#[test]
fn search_default_for_www_example_org_lists_every_search_query_then_the_absolute_one() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    // The node's own search domains (kubelet appends them to a ClusterFirst pod's list) come
    // from the server's resolv.conf; under nx.example.org the fake upstream says NXDOMAIN.
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "search corp.nx.example.org lab.nx.example.org\nnameserver 192.0.2.53\n",
    )
    .expect("write resolv.conf");
    let resolv = resolv.to_string_lossy().into_owned();
    let shop = Shop::start(Some(upstream.addr), &["--resolv-conf", &resolv]);

    let s = shop.explain_json(&["www.example.org", "--search", "default", "--resolve"]);
    assert_eq!(s["namespace"], "default");
    assert_eq!(s["ndots"], 5);
    assert_eq!(
        strings(&s["search_list"]),
        [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.nx.example.org",
            "lab.nx.example.org"
        ]
    );
    let queries = s["queries"].as_array().expect("queries");
    let asked: Vec<(&str, &str)> = queries
        .iter()
        .map(|q| {
            (
                q["name"].as_str().expect("name"),
                q["rcode"].as_str().expect("rcode"),
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            ("www.example.org.default.svc.cluster.local.", "NXDOMAIN"),
            ("www.example.org.svc.cluster.local.", "NXDOMAIN"),
            ("www.example.org.cluster.local.", "NXDOMAIN"),
            ("www.example.org.corp.nx.example.org.", "NXDOMAIN"),
            ("www.example.org.lab.nx.example.org.", "NXDOMAIN"),
            ("www.example.org.", "NOERROR"),
        ]
    );
    assert_eq!(s["count"], 6);
    assert_eq!(s["answered_by"], 5);
    assert_eq!(queries[0]["path"], "zone");
    assert_eq!(queries[3]["path"], "upstream");
    let advice = strings(&s["advice"]).join("\n");
    assert!(
        advice.contains("trailing dot (www.example.org.) to ask 1 question instead of 6"),
        "{advice}"
    );
    assert!(advice.contains("ndots: \"2\""), "{advice}");

    // Without --resolve nothing goes upstream: the search stops at the first question only
    // an upstream could answer. With the node's domains left out, that is the absolute name.
    // (www.example.org is cached now: another name.)
    let asked_before = upstream.count();
    let text = shop.explain_text(&[
        "mail.example.org",
        "--search",
        "default",
        "--node-search",
        "",
    ]);
    assert!(text.contains("4 question(s)"), "{text}");
    assert!(
        text.contains("  3. mail.example.org.cluster.local. A -> NXDOMAIN"),
        "{text}"
    );
    assert!(
        text.contains("  4. mail.example.org. A -> unknown (upstream not asked)"),
        "{text}"
    );
    assert!(text.contains("ask 1 question instead of 4"), "{text}");
    assert_eq!(upstream.count(), asked_before, "no upstream query");

    // A short cluster name is answered by the first search domain that has it.
    let s = shop.explain_json(&["orders.shop", "--search", "default", "--node-search", ""]);
    assert_eq!(s["count"], 2);
    assert_eq!(s["answered_by"], 1);
    assert_eq!(s["queries"][1]["name"], "orders.shop.svc.cluster.local.");
    assert!(
        strings(&s["advice"])
            .join("\n")
            .contains("write the full name (orders.shop.svc.cluster.local.)"),
        "{s:#}"
    );
}

#[test]
fn dump_parses_back_to_exactly_what_the_server_answers() {
    let server = Server::fixtures(None);
    let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(["dump", "--server", &admin_url(&server)])
        .output()
        .expect("run clusterdns dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.contains("\n$ORIGIN cluster.local.\n"), "{text}");

    let dump = || {
        let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
            .args(["dump", "--server", &admin_url(&server)])
            .output()
            .expect("run clusterdns dump");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    assert_eq!(dump(), text, "the same zone dumps the same text");

    // Sorted, one record a line.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.starts_with('$'))
        .collect();
    assert!(lines.len() > 100, "{} records", lines.len());
    let names: Vec<Name> = lines
        .iter()
        .map(|l| Name::from_ascii(l.split(' ').next().expect("owner")).expect("owner name"))
        .collect();
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "sorted by name");

    let (_, sets) = hickory_proto::serialize::txt::Parser::new(
        text.as_str(),
        None,
        Some(Name::from_ascii("cluster.local.").expect("name")),
    )
    .parse()
    .expect("the dump is a zone file");
    let parsed_records: usize = sets
        .values()
        .map(|s| s.records_without_rrsigs().count())
        .sum();
    assert_eq!(parsed_records, lines.len(), "one record per line");

    let mut checked = BTreeSet::new();
    for (key, set) in &sets {
        let name = Name::from(key.name.clone());
        let rtype = key.record_type;
        let mut dumped: Vec<String> = set
            .records_without_rrsigs()
            .map(|r| format!("{} {}", r.ttl, r.data))
            .collect();
        dumped.sort();
        let answer = server.tcp(&query(&name.to_string(), rtype));
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name} {rtype}"
        );
        let mut served: Vec<String> = answer
            .answers
            .iter()
            .filter(|r| r.record_type() == rtype)
            .map(|r| format!("{} {}", r.ttl, r.data))
            .collect();
        served.sort();
        assert_eq!(dumped, served, "{name} {rtype}: dump vs DNS");
        checked.insert(rtype);
    }
    for rtype in [
        RecordType::SOA,
        RecordType::NS,
        RecordType::TXT,
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::PTR,
        RecordType::CNAME,
    ] {
        assert!(checked.contains(&rtype), "the dump has {rtype} records");
    }
}

#[test]
fn the_json_shape_has_exactly_the_documented_fields() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let shop = Shop::start(Some(upstream.addr), &[]);
    let e = shop.explain_json(&["db.shop.svc.cluster.local"]);
    assert_eq!(e["version"], 1);
    assert_eq!(
        keys(&e),
        [
            "additional",
            "answers",
            "authoritative",
            "authority",
            "data",
            "excluded",
            "name",
            "notes",
            "nxdomain",
            "path",
            "rcode",
            "service",
            "type",
            "types_present",
            "upstream",
            "version"
        ]
    );
    assert_eq!(e["name"], "db.shop.svc.cluster.local.");
    assert_eq!(e["type"], "A");
    assert_eq!(keys(&e["answers"][0]), ["record", "source"]);
    assert_eq!(
        keys(&e["answers"][0]["source"]),
        [
            "changed_unix",
            "file",
            "kind",
            "name",
            "namespace",
            "note",
            "resource_version"
        ]
    );
    assert_eq!(
        keys(&e["excluded"][0]),
        ["address", "hostname", "reason", "rule", "slice"]
    );
    assert_eq!(
        keys(&e["data"]),
        [
            "api_watches",
            "last_change_unix",
            "seconds_since_change",
            "serial",
            "source",
            "synced"
        ]
    );
    let e = shop.explain_json(&["dbx.shop.svc.cluster.local"]);
    assert_eq!(
        keys(&e["nxdomain"]),
        ["expected", "label", "message", "suggestions", "within"]
    );
    let e = shop.explain_json(&["nx.example.org", "--resolve"]);
    assert_eq!(e["rcode"], "NXDOMAIN");
    let e = shop.explain_json(&["nx.example.org"]);
    assert_eq!(
        keys(&e["upstream"]),
        [
            "cache",
            "name",
            "resolved",
            "served_from",
            "stub_domain",
            "upstreams"
        ]
    );
    assert_eq!(e["upstream"]["cache"]["kind"], "negative");
    assert_eq!(
        keys(&e["upstream"]["cache"]),
        [
            "age_secs",
            "kind",
            "rcode",
            "records",
            "remaining_secs",
            "stale",
            "ttl_secs"
        ]
    );
    assert_eq!(
        keys(&e["upstream"]["upstreams"][0]),
        ["address", "consecutive_failures", "healthy", "looped"]
    );
    let s = shop.explain_json(&["orders", "--search", "shop", "--node-search", ""]);
    assert_eq!(
        keys(&s),
        [
            "advice",
            "answered_by",
            "count",
            "name",
            "namespace",
            "ndots",
            "queries",
            "search_list",
            "type",
            "version"
        ]
    );
    assert_eq!(s["answered_by"], 0);
    assert_eq!(s["queries"][0]["rcode"], "NOERROR");
}

#[test]
fn trace_name_logs_the_explanation_for_that_name_only() {
    let shop = Shop::start(None, &["--trace-name", "Orders.Shop.svc.cluster.local"]);
    let server = &shop.server;
    server.udp(&query("db.shop.svc.cluster.local.", RecordType::A));
    server.udp(&query("orders.shop.svc.cluster.local.", RecordType::A));
    assert!(
        server.log_shows("traced query", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let traced: Vec<&str> = log.lines().filter(|l| l.contains("traced query")).collect();
    assert_eq!(traced.len(), 1, "{log}");
    assert!(traced[0].contains("orders.shop.svc.cluster.local"), "{log}");
    assert!(
        log.contains("Service shop/orders resourceVersion 4711"),
        "the explanation is logged: {log}"
    );
    assert!(
        !log.contains("clusterdns::query: query"),
        "the query log stays off"
    );
}

#[test]
fn explain_without_a_server_says_how_to_reach_one() {
    let closed = support::closed_port();
    let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(["explain", "x.default.svc.cluster.local"])
        .args(["--server", &format!("http://{closed}")])
        .output()
        .expect("run clusterdns explain");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the admin endpoint"),
        "{stderr}"
    );
    assert!(stderr.contains("--admin-listen"), "{stderr}");
}

#[test]
fn from_the_kubernetes_api_records_carry_resource_versions_and_filters_are_named() {
    use support::fakeapi::{self, FakeApi};
    let api = FakeApi::start();
    let mut hidden = fakeapi::service("shop", "hidden", "192.0.2.70");
    hidden["metadata"]["labels"]["tier"] = "internal".into();
    api.apply_all([
        fakeapi::namespace("shop"),
        fakeapi::namespace("other"),
        fakeapi::service("shop", "cart", "192.0.2.71"),
        hidden,
        fakeapi::service("other", "x", "192.0.2.72"),
    ]);
    let server = Server::kubernetes(
        &api,
        &["--namespaces", "shop", "--labels", "tier!=internal"],
    );
    assert!(
        support::eventually(Duration::from_secs(15), || support::http_get(
            server.ready,
            "/ready"
        )
        .0 == 200),
        "never ready; log:\n{}",
        server.log()
    );
    let url = admin_url(&server);
    let json = |args: &[&str]| -> Value {
        serde_json::from_str(&explain_cli(&url, args, true)).expect("JSON")
    };

    let e = json(&["cart.shop.svc.cluster.local"]);
    assert_eq!(e["rcode"], "NOERROR");
    let source = &e["answers"][0]["source"];
    assert_eq!(source["kind"], "Service");
    assert_eq!(source["file"], Value::Null, "not from a manifest");
    let version = source["resource_version"]
        .as_str()
        .expect("resourceVersion");
    assert!(version.parse::<u64>().is_ok(), "{version}");
    assert!(
        e["data"]["source"]
            .as_str()
            .expect("source")
            .starts_with("kubernetes API"),
        "{e:#}"
    );
    assert!(
        support::eventually(Duration::from_secs(10), || {
            let e = json(&["cart.shop.svc.cluster.local"]);
            e["data"]["api_watches"]
                .as_array()
                .is_some_and(|w| w.iter().all(|w| w["synced"] == true))
        }),
        "the watches never show in sync: {:#}",
        e["data"]
    );
    let e = json(&["cart.shop.svc.cluster.local"]);
    let watches = e["data"]["api_watches"].as_array().expect("watches");
    let kinds: Vec<&str> = watches
        .iter()
        .map(|w| w["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["Service", "EndpointSlice", "Namespace"]);
    for watch in watches {
        let at = watch["last_sync_unix"].as_u64().expect("last sync");
        assert!(at <= unix_now() && at + 60 > unix_now(), "{watch}");
    }

    let e = json(&["x.other.svc.cluster.local"]);
    assert_eq!(e["rcode"], "NXDOMAIN");
    assert_eq!(e["nxdomain"]["expected"], "namespace");
    assert!(
        strings(&e["notes"])
            .join("\n")
            .contains("namespace 'other' is not served: kubernetes.namespaces = [shop]"),
        "{e:#}"
    );
    let e = json(&["hidden.shop.svc.cluster.local"]);
    assert_eq!(e["nxdomain"]["expected"], "service");
    assert!(
        strings(&e["notes"])
            .join("\n")
            .contains("label selector 'tier!=internal'"),
        "{e:#}"
    );
}

//! The manifest-directory source, black box: the real binary serving a temporary copy of the
//! fixture cluster while the test edits, adds, removes, breaks and renames files in it.
//!
//! Every change must reach the served zone within 1 s of the write, without a restart. A file
//! that fails to parse is reported (file + reason), counted, and skipped: the objects of its
//! last good version keep answering, and so does every other file.

mod support;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::path::Path;
use std::time::Duration;
use support::{Server, eventually, fixtures, fixtures_copy, query, rdata};

/// How long a change may take to reach the served zone (the issue's requirement).
const WITHIN: Duration = Duration::from_secs(1);

const MANIFEST_ERRORS: &str = "clusterdns_manifest_errors_total";
const OBJECTS_REJECTED: &str = "clusterdns_objects_rejected_total";

/// The A answer for `name` (sorted), or the rcode when it is not NOERROR.
fn a(server: &Server, name: &str) -> Result<Vec<String>, ResponseCode> {
    let answer = server.udp(&query(name, RecordType::A));
    match answer.metadata.response_code {
        ResponseCode::NoError => Ok(rdata(&answer.answers, RecordType::A)),
        rcode => Err(rcode),
    }
}

/// `Ok` with these addresses.
fn ips(list: &[&str]) -> Result<Vec<String>, ResponseCode> {
    let mut out: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    out.sort();
    Ok(out)
}

const NX: Result<Vec<String>, ResponseCode> = Err(ResponseCode::NXDomain);

/// Waits (up to [`WITHIN`]) until `name` answers `want`; panics with the last answer and
/// the server log otherwise.
fn expect_within(server: &Server, name: &str, want: Result<Vec<String>, ResponseCode>) {
    let mut last = None;
    let ok = eventually(WITHIN, || {
        let got = a(server, name);
        let ok = got == want;
        last = Some(got);
        ok
    });
    assert!(
        ok,
        "{name}: wanted {want:?} within {WITHIN:?}, last answer {last:?}\nlog:\n{}",
        server.log()
    );
}

/// Checks that `name` answers `want` now.
fn expect_now(server: &Server, name: &str, want: Result<Vec<String>, ResponseCode>) {
    assert_eq!(a(server, name), want, "{name}\nlog:\n{}", server.log());
}

/// The names every test checks as "the rest keeps serving", with their fixture answers.
fn check_fixture_names(server: &Server) {
    expect_now(
        server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.1"]),
    );
    expect_now(
        server,
        "multi.default.svc.cluster.local.",
        ips(&["192.0.2.3"]),
    );
    expect_now(
        server,
        "web.default.svc.cluster.local.",
        ips(&["192.0.2.10", "192.0.2.11", "192.0.2.13"]),
    );
    expect_now(
        server,
        "web-0.web.default.svc.cluster.local.",
        ips(&["192.0.2.10"]),
    );
    // Too big for UDP: asked over TCP.
    let big = server.tcp(&query("big.default.svc.cluster.local.", RecordType::A));
    assert_eq!(big.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        rdata(&big.answers, RecordType::A).len(),
        100,
        "big over TCP"
    );
}

/// A ClusterIP Service as one YAML document.
fn service(namespace: &str, name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n  ports:\n\
         \x20 - name: http\n    port: 80\n    protocol: TCP\n"
    )
}

/// Writes `contents` to a temporary file next to `path`, then renames it over `path`: how
/// editors and kubectl-like tools replace a file atomically.
fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the manifest");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read fixture copy")
}

/// The fixture `core.yaml` with the `kubernetes` Service's cluster IP changed to `ip`.
fn core_with_kubernetes_ip(ip: &str) -> String {
    let original = read(&fixtures().join("core.yaml"));
    let from = "  clusterIP: 192.0.2.1\n  clusterIPs:\n  - 192.0.2.1\n";
    assert!(original.contains(from), "fixture core.yaml changed");
    original.replace(
        from,
        &format!("  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n"),
    )
}

#[test]
fn loads_the_fixture_directory_without_errors() {
    let dir = fixtures_copy();
    let server = Server::manifests(dir.path(), None, &[]);
    check_fixture_names(&server);
    let answer = server.udp(&query("ext.default.svc.cluster.local.", RecordType::CNAME));
    assert_eq!(
        rdata(&answer.answers, RecordType::CNAME),
        ["www.example.org."],
        "the JSON List is loaded"
    );
    assert_eq!(
        server.metric(MANIFEST_ERRORS, ""),
        0.0,
        "README.md is not a manifest"
    );
}

#[test]
fn editing_a_cluster_ip_is_served_within_a_second() {
    let dir = fixtures_copy();
    let server = Server::manifests(dir.path(), None, &[]);
    expect_now(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.1"]),
    );

    let edited = core_with_kubernetes_ip("192.0.2.101");
    std::fs::write(dir.path().join("core.yaml"), edited).expect("edit core.yaml");
    expect_within(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.101"]),
    );
    // The rest of that file and the other files are untouched.
    expect_now(
        &server,
        "dual.default.svc.cluster.local.",
        ips(&["192.0.2.2"]),
    );
    expect_now(
        &server,
        "api.other.svc.cluster.local.",
        ips(&["192.0.2.50"]),
    );
    expect_now(
        &server,
        "web.default.svc.cluster.local.",
        ips(&["192.0.2.10", "192.0.2.11", "192.0.2.13"]),
    );

    // And back again.
    let edited = core_with_kubernetes_ip("192.0.2.1");
    std::fs::write(dir.path().join("core.yaml"), edited).expect("edit core.yaml");
    expect_within(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.1"]),
    );
    check_fixture_names(&server);
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);
}

#[test]
fn a_new_file_is_served_within_a_second() {
    let dir = fixtures_copy();
    let server = Server::manifests(dir.path(), None, &[]);
    expect_now(&server, "fresh.default.svc.cluster.local.", NX);
    expect_now(&server, "fresh.brand-new.svc.cluster.local.", NX);

    // Editor leftovers and other non-manifest files are never read, broken or not.
    std::fs::write(dir.path().join(".fresh.yaml.swp"), "\0\0\0 swap {{{").expect("write swp");
    std::fs::write(dir.path().join("fresh.yaml~"), "kind: [").expect("write backup");
    std::fs::write(dir.path().join("notes.txt"), "kind: [").expect("write notes");

    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: brand-new\n---\n{}---\n{}",
        service("default", "fresh", "192.0.2.120"),
        service("brand-new", "fresh", "192.0.2.121"),
    );
    std::fs::write(dir.path().join("fresh.yaml"), text).expect("write fresh.yaml");
    expect_within(
        &server,
        "fresh.default.svc.cluster.local.",
        ips(&["192.0.2.120"]),
    );
    expect_within(
        &server,
        "fresh.brand-new.svc.cluster.local.",
        ips(&["192.0.2.121"]),
    );
    check_fixture_names(&server);
    assert_eq!(
        server.metric(MANIFEST_ERRORS, ""),
        0.0,
        "non-manifest files were read"
    );

    // A JSON file in a new subdirectory too.
    std::fs::create_dir(dir.path().join("more")).expect("mkdir");
    let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "deep", "namespace": "default"},
         "spec": {"clusterIP": "192.0.2.122", "ports": [{"port": 80}]}}]}"#;
    std::fs::write(dir.path().join("more/deep.json"), json).expect("write deep.json");
    expect_within(
        &server,
        "deep.default.svc.cluster.local.",
        ips(&["192.0.2.122"]),
    );
}

#[test]
fn a_removed_file_is_gone_within_a_second() {
    let dir = fixtures_copy();
    let server = Server::manifests(dir.path(), None, &[]);
    let medium = server.tcp(&query("medium.default.svc.cluster.local.", RecordType::A));
    assert_eq!(
        rdata(&medium.answers, RecordType::A).len(),
        40,
        "medium over TCP"
    );

    std::fs::remove_file(dir.path().join("sizes.yaml")).expect("remove sizes.yaml");
    expect_within(&server, "medium.default.svc.cluster.local.", NX);
    expect_now(&server, "big.default.svc.cluster.local.", NX);
    expect_now(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.1"]),
    );
    expect_now(
        &server,
        "web.default.svc.cluster.local.",
        ips(&["192.0.2.10", "192.0.2.11", "192.0.2.13"]),
    );

    // A JSON file too.
    std::fs::remove_file(dir.path().join("external.json")).expect("remove external.json");
    let gone = eventually(WITHIN, || {
        let answer = server.udp(&query("ext.default.svc.cluster.local.", RecordType::CNAME));
        answer.metadata.response_code == ResponseCode::NXDomain
    });
    assert!(gone, "ext still answers after external.json was removed");
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);
}

#[test]
fn a_broken_file_keeps_its_last_good_version() {
    let dir = fixtures_copy();
    let server = Server::manifests(dir.path(), None, &[]);
    check_fixture_names(&server);
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);
    let headless = dir.path().join("headless.yml");
    let original = read(&headless);

    // A syntax error on line 4, over a file that was good.
    let broken = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n  namespace: default\n";
    std::fs::write(&headless, broken).expect("break headless.yml");
    assert!(
        eventually(WITHIN, || server.metric(MANIFEST_ERRORS, "") == 1.0),
        "the broken file was not counted\nlog:\n{}",
        server.log()
    );
    // Reported with the file and the reason.
    let log = server.log();
    let report = log
        .lines()
        .find(|l| l.contains("headless.yml") && l.contains("rejected manifest file"))
        .unwrap_or_else(|| panic!("no report naming headless.yml\nlog:\n{log}"));
    assert!(report.contains("WARN"), "{report}");
    assert!(report.contains("line "), "the reason has a line: {report}");
    // Its old objects keep answering, and so does everything else.
    check_fixture_names(&server);
    expect_now(
        &server,
        "web6-1.web6.default.svc.cluster.local.",
        Ok(Vec::new()),
    );

    // The rest keeps updating while it is broken.
    std::fs::write(
        dir.path().join("meanwhile.yaml"),
        service("default", "meanwhile", "192.0.2.130"),
    )
    .expect("write meanwhile.yaml");
    expect_within(
        &server,
        "meanwhile.default.svc.cluster.local.",
        ips(&["192.0.2.130"]),
    );
    check_fixture_names(&server);
    assert_eq!(
        server.metric(MANIFEST_ERRORS, ""),
        1.0,
        "counted once per broken version"
    );

    // A type error (a string where a port number goes) is a broken file too.
    let type_error = format!(
        "{original}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: typo\n  namespace: default\n\
         spec:\n  clusterIP: 192.0.2.131\n  ports:\n  - port: eighty\n"
    );
    std::fs::write(&headless, type_error).expect("break headless.yml again");
    assert!(
        eventually(WITHIN, || server.metric(MANIFEST_ERRORS, "") == 2.0),
        "the type error was not counted\nlog:\n{}",
        server.log()
    );
    expect_now(&server, "typo.default.svc.cluster.local.", NX);
    check_fixture_names(&server);

    // Fixed (with one more Service): back to normal, nothing more counted.
    let fixed = format!(
        "{original}---\n{}",
        service("default", "fixed", "192.0.2.132")
    );
    std::fs::write(&headless, fixed).expect("fix headless.yml");
    expect_within(
        &server,
        "fixed.default.svc.cluster.local.",
        ips(&["192.0.2.132"]),
    );
    check_fixture_names(&server);
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 2.0);

    // Broken again and then removed: the objects of its last good version go with it.
    std::fs::write(&headless, "{{{").expect("break headless.yml");
    assert!(eventually(WITHIN, || server.metric(MANIFEST_ERRORS, "") == 3.0));
    std::fs::remove_file(&headless).expect("remove headless.yml");
    expect_within(&server, "web.default.svc.cluster.local.", NX);
    expect_now(&server, "fixed.default.svc.cluster.local.", NX);
    expect_now(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.1"]),
    );
}

#[test]
fn a_broken_file_at_startup_is_skipped() {
    let dir = fixtures_copy();
    std::fs::write(
        dir.path().join("broken.yaml"),
        format!(
            "{}---\nkind: [\n",
            service("default", "never", "192.0.2.140")
        ),
    )
    .expect("write broken.yaml");
    let server = Server::manifests(dir.path(), None, &[]);
    check_fixture_names(&server);
    expect_now(&server, "never.default.svc.cluster.local.", NX);
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 1.0);
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("broken.yaml") && l.contains("rejected manifest file")),
        "no report naming broken.yaml\nlog:\n{log}"
    );

    // Fixing it serves it.
    std::fs::write(
        dir.path().join("broken.yaml"),
        service("default", "never", "192.0.2.140"),
    )
    .expect("fix broken.yaml");
    expect_within(
        &server,
        "never.default.svc.cluster.local.",
        ips(&["192.0.2.140"]),
    );
}

/// What `kubectl get svc,endpointslices,pods -A -o yaml` writes: one `kind: List` whose items
/// carry managedFields, status, resourceVersion, uid, creationTimestamp and so on.
const KUBECTL_OUTPUT: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      prometheus.io/port: "9153"
      prometheus.io/scrape: "true"
    creationTimestamp: "2024-05-01T10:00:00Z"
    labels:
      k8s-app: kube-dns
      kubernetes.io/cluster-service: "true"
      kubernetes.io/name: CoreDNS
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:annotations:
            .: {}
            f:prometheus.io/port: {}
            f:prometheus.io/scrape: {}
          f:labels:
            .: {}
            f:k8s-app: {}
        f:spec:
          f:clusterIP: {}
          f:ports:
            .: {}
            k:{"port":53,"protocol":"TCP"}:
              .: {}
              f:name: {}
              f:port: {}
              f:protocol: {}
              f:targetPort: {}
            k:{"port":53,"protocol":"UDP"}:
              .: {}
              f:name: {}
              f:port: {}
              f:protocol: {}
              f:targetPort: {}
      manager: kubeadm
      operation: Update
      time: "2024-05-01T10:00:00Z"
    name: kube-dns
    namespace: kube-system
    resourceVersion: "231"
    uid: 5e7c2a3b-1d4f-4a6b-8c9d-0e1f2a3b4c5d
  spec:
    clusterIP: 192.0.2.150
    clusterIPs:
    - 192.0.2.150
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: dns
      port: 53
      protocol: UDP
      targetPort: 53
    - name: dns-tcp
      port: 53
      protocol: TCP
      targetPort: 53
    - name: metrics
      port: 9153
      protocol: TCP
      targetPort: 9153
    selector:
      k8s-app: kube-dns
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-01T11:00:00Z"
    labels:
      app: db
    name: db
    namespace: kube-system
    resourceVersion: "4242"
    uid: 6f8d3b4c-2e5a-4b7c-9d0e-1f2a3b4c5d6e
  spec:
    clusterIP: None
    clusterIPs:
    - None
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: pg
      port: 5432
      protocol: TCP
      targetPort: 5432
    publishNotReadyAddresses: false
    selector:
      app: db
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 192.0.2.151
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
    targetRef:
      kind: Pod
      name: coredns-7db6d8ff4d-abcde
      namespace: kube-system
      uid: 7a9e4c5d-3f6b-4c8d-0e1f-2a3b4c5d6e7f
    zone: zone-a
  kind: EndpointSlice
  metadata:
    annotations:
      endpoints.kubernetes.io/last-change-trigger-time: "2024-05-01T10:00:30Z"
    creationTimestamp: "2024-05-01T10:00:00Z"
    generateName: kube-dns-
    generation: 4
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      k8s-app: kube-dns
      kubernetes.io/service-name: kube-dns
    managedFields:
    - apiVersion: discovery.k8s.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:addressType: {}
        f:endpoints: {}
        f:metadata:
          f:generateName: {}
        f:ports: {}
      manager: kube-controller-manager
      operation: Update
      time: "2024-05-01T10:00:30Z"
    name: kube-dns-x7k2p
    namespace: kube-system
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: kube-dns
      uid: 5e7c2a3b-1d4f-4a6b-8c9d-0e1f2a3b4c5d
    resourceVersion: "512"
    uid: 8b0f5d6e-4a7c-4d9e-1f2a-3b4c5d6e7f80
  ports:
  - name: dns-tcp
    port: 53
    protocol: TCP
  - name: dns
    port: 53
    protocol: UDP
  - name: metrics
    port: 9153
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 192.0.2.152
    conditions:
      ready: true
      serving: true
      terminating: false
    hostname: db-0
    nodeName: node-a
    targetRef:
      kind: Pod
      name: db-0
      namespace: kube-system
      uid: 9c1a6e7f-5b8d-4e0f-2a3b-4c5d6e7f8091
  - addresses:
    - 192.0.2.153
    conditions:
      ready: false
      serving: false
      terminating: false
    hostname: db-1
    nodeName: node-b
    targetRef:
      kind: Pod
      name: db-1
      namespace: kube-system
      uid: 0d2b7f80-6c9e-4f1a-3b4c-5d6e7f8091a2
  kind: EndpointSlice
  metadata:
    creationTimestamp: "2024-05-01T11:00:00Z"
    generateName: db-
    generation: 2
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: db
      service.kubernetes.io/headless: ""
    name: db-q8w2z
    namespace: kube-system
    resourceVersion: "4250"
    uid: 1e3c8091-7d0f-4a2b-4c5d-6e7f8091a2b3
  ports:
  - name: pg
    port: 5432
    protocol: TCP
- apiVersion: v1
  kind: Pod
  metadata:
    creationTimestamp: "2024-05-01T11:00:00Z"
    generateName: db-
    labels:
      app: db
      apps.kubernetes.io/pod-index: "0"
      statefulset.kubernetes.io/pod-name: db-0
    name: db-0
    namespace: kube-system
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: StatefulSet
      name: db
      uid: 2f4d91a2-8e1a-4b3c-5d6e-7f8091a2b3c4
    resourceVersion: "4249"
    uid: 9c1a6e7f-5b8d-4e0f-2a3b-4c5d6e7f8091
  spec:
    containers:
    - image: postgres:16
      imagePullPolicy: IfNotPresent
      name: postgres
      ports:
      - containerPort: 5432
        name: pg
        protocol: TCP
      resources:
        limits:
          cpu: "1"
          memory: 1Gi
        requests:
          cpu: 250m
          memory: 256Mi
      terminationMessagePath: /dev/termination-log
      terminationMessagePolicy: File
      volumeMounts:
      - mountPath: /var/run/secrets/kubernetes.io/serviceaccount
        name: kube-api-access-abcde
        readOnly: true
    dnsPolicy: ClusterFirst
    enableServiceLinks: true
    hostname: db-0
    nodeName: node-a
    preemptionPolicy: PreemptLowerPriority
    priority: 0
    restartPolicy: Always
    schedulerName: default-scheduler
    securityContext: {}
    serviceAccountName: default
    subdomain: db
    terminationGracePeriodSeconds: 30
    tolerations:
    - effect: NoExecute
      key: node.kubernetes.io/not-ready
      operator: Exists
      tolerationSeconds: 300
    volumes:
    - name: kube-api-access-abcde
      projected:
        defaultMode: 420
        sources:
        - serviceAccountToken:
            expirationSeconds: 3607
            path: token
  status:
    conditions:
    - lastProbeTime: null
      lastTransitionTime: "2024-05-01T11:00:05Z"
      status: "True"
      type: Ready
    containerStatuses:
    - containerID: containerd://0123456789abcdef
      image: docker.io/library/postgres:16
      imageID: docker.io/library/postgres@sha256:0123456789abcdef
      lastState: {}
      name: postgres
      ready: true
      restartCount: 0
      started: true
      state:
        running:
          startedAt: "2024-05-01T11:00:04Z"
    hostIP: 198.51.100.250
    hostIPs:
    - ip: 198.51.100.250
    phase: Running
    podIP: 192.0.2.152
    podIPs:
    - ip: 192.0.2.152
    qosClass: Burstable
    startTime: "2024-05-01T11:00:00Z"
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn kubectl_get_output_loads() {
    let dir = fixtures_copy();
    std::fs::write(dir.path().join("kubectl.yaml"), KUBECTL_OUTPUT).expect("write kubectl.yaml");
    let server = Server::manifests(dir.path(), None, &[]);
    assert_eq!(
        server.metric(MANIFEST_ERRORS, ""),
        0.0,
        "log:\n{}",
        server.log()
    );
    expect_now(
        &server,
        "kube-dns.kube-system.svc.cluster.local.",
        ips(&["192.0.2.150"]),
    );
    expect_now(
        &server,
        "db.kube-system.svc.cluster.local.",
        ips(&["192.0.2.152"]),
    );
    expect_now(
        &server,
        "db-0.db.kube-system.svc.cluster.local.",
        ips(&["192.0.2.152"]),
    );
    let srv = server.udp(&query(
        "_dns._udp.kube-dns.kube-system.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert_eq!(srv.metadata.response_code, ResponseCode::NoError);
    assert_eq!(srv.answers.len(), 1, "{srv:?}");
    check_fixture_names(&server);

    // Written while running, as JSON would be too: the same output, one IP changed.
    std::fs::write(
        dir.path().join("kubectl.yaml"),
        KUBECTL_OUTPUT.replace("192.0.2.150", "192.0.2.155"),
    )
    .expect("rewrite kubectl.yaml");
    expect_within(
        &server,
        "kube-dns.kube-system.svc.cluster.local.",
        ips(&["192.0.2.155"]),
    );
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);
}

#[test]
fn objects_invalid_for_dns_are_skipped_and_counted() {
    let dir = fixtures_copy();
    let text = [
        // Not a DNS label: a dot would make it two.
        service("default", "bad.name", "192.0.2.160"),
        service("default", "bad-ip", "not-an-ip"),
        service("default", "good", "192.0.2.161"),
        // Without a name at all.
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: default\nspec:\n  clusterIP: 192.0.2.162\n"
            .to_string(),
    ]
    .join("---\n");
    std::fs::write(dir.path().join("invalid.yaml"), text).expect("write invalid.yaml");
    let server = Server::manifests(dir.path(), None, &[]);
    expect_now(
        &server,
        "good.default.svc.cluster.local.",
        ips(&["192.0.2.161"]),
    );
    expect_now(&server, "bad-ip.default.svc.cluster.local.", NX);
    check_fixture_names(&server);
    let rejected = |reason: &str| {
        server.metric(
            OBJECTS_REJECTED,
            &format!("kind=\"Service\",reason=\"{reason}\""),
        )
    };
    assert_eq!(rejected("invalid_name"), 1.0, "{}", server.metrics_text());
    assert_eq!(
        rejected("invalid_address"),
        1.0,
        "{}",
        server.metrics_text()
    );
    assert_eq!(rejected("no_name"), 1.0, "{}", server.metrics_text());
    // Bad objects are not bad files.
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);

    // Added while running: skipped and counted the same way, the rest keeps serving.
    std::fs::write(
        dir.path().join("later.yaml"),
        format!(
            "{}---\n{}",
            service("default", "bad-ip-2", "192.0.2.999"),
            service("default", "good-2", "192.0.2.163")
        ),
    )
    .expect("write later.yaml");
    expect_within(
        &server,
        "good-2.default.svc.cluster.local.",
        ips(&["192.0.2.163"]),
    );
    assert!(eventually(WITHIN, || rejected("invalid_address") == 2.0));
    expect_now(&server, "bad-ip-2.default.svc.cluster.local.", NX);
    check_fixture_names(&server);
}

#[test]
fn atomic_rename_writes_are_picked_up() {
    let dir = fixtures_copy();
    let server = Server::manifests(dir.path(), None, &[]);
    expect_now(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.1"]),
    );

    write_atomic(
        &dir.path().join("core.yaml"),
        &core_with_kubernetes_ip("192.0.2.170"),
    );
    expect_within(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.170"]),
    );

    // Several in a row, each one seen.
    for ip in ["192.0.2.171", "192.0.2.172", "192.0.2.173"] {
        write_atomic(&dir.path().join("core.yaml"), &core_with_kubernetes_ip(ip));
        expect_within(&server, "kubernetes.default.svc.cluster.local.", ips(&[ip]));
    }

    // A new file created by a rename.
    write_atomic(
        &dir.path().join("renamed.yaml"),
        &service("default", "renamed", "192.0.2.174"),
    );
    expect_within(
        &server,
        "renamed.default.svc.cluster.local.",
        ips(&["192.0.2.174"]),
    );
    // A file renamed to a non-manifest name is gone.
    std::fs::rename(
        dir.path().join("renamed.yaml"),
        dir.path().join("renamed.yaml.disabled"),
    )
    .expect("rename away");
    expect_within(&server, "renamed.default.svc.cluster.local.", NX);
    check_fixture_names_except_kubernetes(&server);
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);
}

fn check_fixture_names_except_kubernetes(server: &Server) {
    expect_now(
        server,
        "multi.default.svc.cluster.local.",
        ips(&["192.0.2.3"]),
    );
    expect_now(
        server,
        "web-0.web.default.svc.cluster.local.",
        ips(&["192.0.2.10"]),
    );
}

/// A Kubernetes ConfigMap volume: every key is a symlink `<key> -> ..data/<key>`, `..data` is
/// a symlink to a timestamped directory, and an update writes a new directory and renames a
/// new symlink over `..data`.
#[cfg(unix)]
#[test]
fn configmap_volume_updates_are_picked_up() {
    use std::os::unix::fs::symlink;
    let fixtures = fixtures_copy();
    let volume = tempfile::tempdir().expect("temp dir");
    let root = volume.path();
    let keys = ["core.yaml", "headless.yml", "sizes.yaml", "external.json"];
    let publish = |version: &str, files: &[(&str, String)]| {
        let dir = root.join(format!("..2024_05_01_10_00_00.{version}"));
        std::fs::create_dir(&dir).expect("mkdir version");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write key");
        }
        let tmp = root.join("..data_tmp");
        symlink(dir.file_name().expect("name"), &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, root.join("..data")).expect("swap ..data");
    };
    let original: Vec<(&str, String)> = keys
        .iter()
        .map(|k| (*k, read(&fixtures.path().join(k))))
        .collect();
    publish("1", &original);
    for key in keys {
        symlink(format!("..data/{key}"), root.join(key)).expect("symlink key");
    }

    let server = Server::manifests(root, None, &[]);
    expect_now(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.1"]),
    );
    expect_now(
        &server,
        "web-0.web.default.svc.cluster.local.",
        ips(&["192.0.2.10"]),
    );
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);

    // Update one key.
    let mut updated = original.clone();
    updated[0].1 = core_with_kubernetes_ip("192.0.2.180");
    publish("2", &updated);
    std::fs::remove_dir_all(root.join("..2024_05_01_10_00_00.1")).expect("remove old version");
    expect_within(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.180"]),
    );
    expect_now(
        &server,
        "web-0.web.default.svc.cluster.local.",
        ips(&["192.0.2.10"]),
    );

    // Remove a key from the ConfigMap: kubelet drops its symlink and its file.
    let without_headless: Vec<(&str, String)> = updated
        .iter()
        .filter(|(k, _)| *k != "headless.yml")
        .cloned()
        .collect();
    publish("3", &without_headless);
    std::fs::remove_file(root.join("headless.yml")).expect("remove key symlink");
    std::fs::remove_dir_all(root.join("..2024_05_01_10_00_00.2")).expect("remove old version");
    expect_within(&server, "web-0.web.default.svc.cluster.local.", NX);
    expect_now(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.180"]),
    );
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);
}

/// `kubectl get svc,endpointslices,pods -A -o yaml > core.yaml`: the shell truncates the file
/// at once and kubectl writes it when the API server has answered. Meanwhile the file's
/// objects keep answering; the new content is served within 1 s of the close.
#[cfg(target_os = "linux")]
#[test]
fn a_file_being_rewritten_in_place_keeps_answering() {
    use std::io::Write as _;
    let dir = fixtures_copy();
    let server = Server::manifests(dir.path(), None, &[]);
    assert!(
        server.log_shows("watching the manifest directory", Duration::from_secs(5)),
        "the watch did not start\nlog:\n{}",
        server.log()
    );
    let mut file = std::fs::File::create(dir.path().join("core.yaml")).expect("truncate");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        expect_now(
            &server,
            "kubernetes.default.svc.cluster.local.",
            ips(&["192.0.2.1"]),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    file.write_all(core_with_kubernetes_ip("192.0.2.190").as_bytes())
        .expect("write");
    drop(file);
    expect_within(
        &server,
        "kubernetes.default.svc.cluster.local.",
        ips(&["192.0.2.190"]),
    );
    check_fixture_names_except_kubernetes(&server);
    assert_eq!(server.metric(MANIFEST_ERRORS, ""), 0.0);
}

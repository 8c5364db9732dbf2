//! Cache rules with a controlled clock: lifetimes, TTL countdown, negative caching, stale.

use super::*;
use hickory_proto::op::{Edns, Query};
use hickory_proto::rr::RData;
use hickory_proto::rr::rdata::{A, SOA};
use std::str::FromStr;

fn name(s: &str) -> Name {
    Name::from_str(s).expect("valid name")
}

fn key(qname: &str, qtype: RecordType) -> CacheKey {
    let mut query = Message::query();
    query.add_query(Query::query(name(qname), qtype));
    CacheKey::of(&query).expect("one question")
}

fn a(qname: &str, ttl: u32) -> Record {
    Record::from_rdata(name(qname), ttl, RData::A(A::new(192, 0, 2, 1)))
}

fn soa(ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        name("example.org."),
        ttl,
        RData::SOA(SOA::new(
            name("ns.example.org."),
            name("hostmaster.example.org."),
            1,
            7200,
            1800,
            86400,
            minimum,
        )),
    )
}

fn answer(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> CachedAnswer {
    CachedAnswer {
        rcode,
        answers,
        authorities,
        additionals: Vec::new(),
    }
}

fn cache(config: CacheConfig) -> (Cache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (Cache::new(&config, metrics.clone()), metrics)
}

fn fresh(lookup: Lookup) -> (CachedAnswer, bool) {
    match lookup {
        Lookup::Fresh {
            answer, prefetch, ..
        } => (answer, prefetch),
        other => panic!("expected a fresh entry, got {other:?}"),
    }
}

#[test]
fn positive_answers_count_down_then_turn_stale() {
    let (cache, _) = cache(CacheConfig::default());
    let now = Instant::now();
    let k = key("www.example.org.", RecordType::A);
    cache.insert(
        k.clone(),
        &answer(
            ResponseCode::NoError,
            vec![a("www.example.org.", 60)],
            vec![],
        ),
        now,
    );

    let (hit, _) = fresh(cache.get(&k, now + Duration::from_secs(20)));
    assert_eq!(hit.rcode, ResponseCode::NoError);
    assert_eq!(hit.answers.len(), 1);
    assert_eq!(hit.answers[0].ttl, 40);
    assert_eq!(cache.counters.hits[Kind::Success.index()].get(), 1);

    match cache.get(&k, now + Duration::from_secs(61)) {
        Lookup::Stale(stale) => assert_eq!(stale.answers[0].ttl, STALE_TTL),
        other => panic!("expected stale, got {other:?}"),
    }
    assert_eq!(cache.counters.misses.get(), 1);
}

#[test]
fn names_are_case_insensitive_but_do_and_type_are_not() {
    let (cache, _) = cache(CacheConfig::default());
    let now = Instant::now();
    cache.insert(
        key("www.example.org.", RecordType::A),
        &answer(
            ResponseCode::NoError,
            vec![a("www.example.org.", 60)],
            vec![],
        ),
        now,
    );
    fresh(cache.get(&key("WWW.Example.ORG.", RecordType::A), now));
    assert!(matches!(
        cache.get(&key("www.example.org.", RecordType::AAAA), now),
        Lookup::Miss
    ));
    let mut with_do = Message::query();
    with_do.add_query(Query::query(name("www.example.org."), RecordType::A));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    with_do.edns = Some(edns);
    let do_key = CacheKey::of(&with_do).expect("key");
    assert!(matches!(cache.get(&do_key, now), Lookup::Miss));
}

#[test]
fn ttls_are_capped_and_floored() {
    let (cache, _) = cache(CacheConfig::default());
    let now = Instant::now();
    let long = key("long.example.org.", RecordType::A);
    cache.insert(
        long.clone(),
        &answer(
            ResponseCode::NoError,
            vec![a("long.example.org.", 86400)],
            vec![],
        ),
        now,
    );
    assert_eq!(fresh(cache.get(&long, now)).0.answers[0].ttl, 3600);
    let short = key("short.example.org.", RecordType::A);
    cache.insert(
        short.clone(),
        &answer(
            ResponseCode::NoError,
            vec![a("short.example.org.", 1)],
            vec![],
        ),
        now,
    );
    assert_eq!(fresh(cache.get(&short, now)).0.answers[0].ttl, 5);
    // Still fresh at 3 s: the entry lives for the floor, not the record's 1 s.
    assert_eq!(
        fresh(cache.get(&short, now + Duration::from_secs(3)))
            .0
            .answers[0]
            .ttl,
        2
    );
}

#[test]
fn negative_answers_live_for_the_soa_minimum() {
    let (cache, _) = cache(CacheConfig::default());
    let now = Instant::now();
    let k = key("gone.example.org.", RecordType::A);
    cache.insert(
        k.clone(),
        &answer(ResponseCode::NXDomain, vec![], vec![soa(600, 60)]),
        now,
    );
    let (hit, _) = fresh(cache.get(&k, now + Duration::from_secs(10)));
    assert_eq!(hit.rcode, ResponseCode::NXDomain);
    assert!(hit.answers.is_empty());
    assert_eq!(hit.authorities.len(), 1);
    assert_eq!(hit.authorities[0].ttl, 50);
    assert_eq!(cache.counters.hits[Kind::Denial.index()].get(), 1);
    assert!(matches!(
        cache.get(&k, now + Duration::from_secs(61)),
        Lookup::Stale(_)
    ));

    // NODATA is negative too, and capped by max_negative_ttl.
    let nodata = key("www.example.org.", RecordType::AAAA);
    cache.insert(
        nodata.clone(),
        &answer(ResponseCode::NoError, vec![], vec![soa(86400, 86400)]),
        now,
    );
    assert_eq!(fresh(cache.get(&nodata, now)).0.authorities[0].ttl, 1800);

    // Without SOA a negative answer says nothing about its lifetime: not cached.
    let bare = key("bare.example.org.", RecordType::A);
    cache.insert(
        bare.clone(),
        &answer(ResponseCode::NXDomain, vec![], vec![]),
        now,
    );
    assert!(matches!(cache.get(&bare, now), Lookup::Miss));
}

#[test]
fn servfail_is_cached_briefly_or_not_at_all() {
    let now = Instant::now();
    let k = key("broken.example.org.", RecordType::A);
    let (cache, _) = cache(CacheConfig::default());
    cache.insert(
        k.clone(),
        &answer(ResponseCode::ServFail, vec![], vec![]),
        now,
    );
    assert_eq!(
        fresh(cache.get(&k, now + Duration::from_secs(4))).0.rcode,
        ResponseCode::ServFail
    );
    assert!(!matches!(
        cache.get(&k, now + Duration::from_secs(5)),
        Lookup::Fresh { .. }
    ));

    let (off, _) = self::cache(CacheConfig {
        servfail_ttl: 0,
        ..CacheConfig::default()
    });
    off.insert(
        k.clone(),
        &answer(ResponseCode::ServFail, vec![], vec![]),
        now,
    );
    assert!(matches!(off.get(&k, now), Lookup::Miss));
    // REFUSED is never cached.
    off.insert(
        k.clone(),
        &answer(ResponseCode::Refused, vec![], vec![]),
        now,
    );
    assert!(matches!(off.get(&k, now), Lookup::Miss));
}

#[test]
fn an_answer_replaces_a_negative_entry_for_the_same_question() {
    let (cache, _) = cache(CacheConfig::default());
    let now = Instant::now();
    let k = key("new.example.org.", RecordType::A);
    cache.insert(
        k.clone(),
        &answer(ResponseCode::NXDomain, vec![], vec![soa(60, 60)]),
        now,
    );
    cache.insert(
        k.clone(),
        &answer(
            ResponseCode::NoError,
            vec![a("new.example.org.", 60)],
            vec![],
        ),
        now,
    );
    assert_eq!(fresh(cache.get(&k, now)).0.rcode, ResponseCode::NoError);
}

#[test]
fn popular_entries_near_expiry_ask_for_one_prefetch() {
    let (cache, _) = cache(CacheConfig {
        prefetch: 2,
        ..CacheConfig::default()
    });
    let now = Instant::now();
    let k = key("hot.example.org.", RecordType::A);
    cache.insert(
        k.clone(),
        &answer(
            ResponseCode::NoError,
            vec![a("hot.example.org.", 100)],
            vec![],
        ),
        now,
    );
    // Popular, but far from expiry.
    assert!(!fresh(cache.get(&k, now + Duration::from_secs(10))).1);
    assert!(!fresh(cache.get(&k, now + Duration::from_secs(20))).1);
    // Less than 10% left: refresh, once.
    assert!(fresh(cache.get(&k, now + Duration::from_secs(95))).1);
    assert!(!fresh(cache.get(&k, now + Duration::from_secs(96))).1);

    let (off, _) = self::cache(CacheConfig {
        prefetch: 0,
        ..CacheConfig::default()
    });
    off.insert(
        k.clone(),
        &answer(
            ResponseCode::NoError,
            vec![a("hot.example.org.", 100)],
            vec![],
        ),
        now,
    );
    for _ in 0..5 {
        assert!(!fresh(off.get(&k, now + Duration::from_secs(99))).1);
    }
}

#[test]
fn capacity_bounds_the_entries_whatever_the_names() {
    let (cache, metrics) = cache(CacheConfig {
        capacity: 50,
        negative_capacity: 20,
        ..CacheConfig::default()
    });
    let now = Instant::now();
    for i in 0..2000 {
        let qname = format!("r{i}.example.org.");
        cache.insert(
            key(&qname, RecordType::A),
            &answer(ResponseCode::NoError, vec![a(&qname, 60)], vec![]),
            now,
        );
        cache.insert(
            key(&qname, RecordType::AAAA),
            &answer(ResponseCode::NXDomain, vec![], vec![soa(60, 60)]),
            now,
        );
    }
    cache.update_entry_gauges();
    let success = cache.counters.entries[Kind::Success.index()].get();
    let denial = cache.counters.entries[Kind::Denial.index()].get();
    assert!(success <= 50 && success > 0, "{success}");
    assert!(denial <= 20 && denial > 0, "{denial}");
    assert!(
        metrics
            .cache_evictions
            .with_label_values(&[metrics.server_label(), "success", ".", ""])
            .get()
            > 0
    );
}

#[test]
fn a_disabled_cache_keeps_nothing() {
    let (cache, _) = cache(CacheConfig {
        capacity: 0,
        ..CacheConfig::default()
    });
    let now = Instant::now();
    let k = key("www.example.org.", RecordType::A);
    cache.insert(
        k.clone(),
        &answer(
            ResponseCode::NoError,
            vec![a("www.example.org.", 60)],
            vec![],
        ),
        now,
    );
    assert!(matches!(cache.get(&k, now), Lookup::Miss));
    assert_eq!(cache.counters.requests.get(), 0);
}

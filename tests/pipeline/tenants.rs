//! Several tenants in one fleet: each on its own simulated API host, with
//! its own token, pairs and budget; two replicas of the real binary through
//! Redis, to NATS JetStream.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use cas_bridge::config::{SinkKind, StartFrom, TenantSpec};
use cas_bridge::shard::Shard;
use cas_bridge::sim::{SimConfig, SimHandle, ThrottleMode};
use chrono::Utc;
use serde_json::json;

use crate::helpers::*;

pub(crate) struct TenantUnderTest {
    pub(crate) name: &'static str,
    pub(crate) pairs: Vec<&'static str>,
    pub(crate) per_minute: u32,
    pub(crate) sim: SimHandle,
    pub(crate) token_file: std::path::PathBuf,
}

fn shards(t: &TenantUnderTest) -> Vec<Shard> {
    t.pairs
        .iter()
        .map(|p| {
            let (s, e) = p.split_once(':').unwrap();
            Shard::new(s, e)
        })
        .collect()
}

/// A simulator per tenant, each with its own token file (`per_minute` 0:
/// unthrottled; else a sliding budget the tenant is configured with too).
pub(crate) async fn start_tenants(
    dir: &std::path::Path,
    specs: Vec<(&'static str, Vec<&'static str>, u32)>,
    seed: u64,
) -> Vec<TenantUnderTest> {
    let mut tenants = Vec::new();
    for (i, (name, pairs, per_minute)) in specs.into_iter().enumerate() {
        let token = format!("token-of-{name}");
        let sim = start_sim(SimConfig {
            token: token.clone(),
            seed: seed + i as u64,
            per_minute,
            per_day: 0,
            throttle: ThrottleMode::Sliding,
            ..sim_config()
        })
        .await;
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        tenants.push(TenantUnderTest {
            name,
            pairs,
            per_minute,
            sim,
            token_file,
        });
    }
    tenants
}

/// The tenant's entry of `tenants`: its simulator, token file, pairs and budget.
pub(crate) fn spec(t: &TenantUnderTest) -> TenantSpec {
    let mut spec = TenantSpec {
        name: t.name.into(),
        api: json!({ "base_url": t.sim.base_url(), "token_file": t.token_file })
            .as_object()
            .unwrap()
            .clone(),
        shards: json!({ "pairs": t.pairs }).as_object().unwrap().clone(),
        ..TenantSpec::default()
    };
    if t.per_minute > 0 {
        spec.budget.insert("per_minute".into(), json!(t.per_minute));
    }
    spec
}

/// A fleet configuration on Redis and NATS: the top level points at the
/// first simulator with the wrong token (only the tenants' own sections may
/// reach their APIs), topics and dead letters per tenant.
fn fleet(tenants: &[&TenantUnderTest], tag: &str) -> cas_bridge::config::Config {
    let mut cfg = fleet_config(&tenants[0].sim, tag, SinkKind::Nats, REDIS_URL, tag);
    cfg.sink.topic_template = format!("{tag}.{{tenant}}.{{service}}.{{event}}");
    cfg.sink.dead_letter = format!("{tag}.{{tenant}}.deadletter");
    cfg.tenants = tenants.iter().map(|t| spec(t)).collect();
    cfg.validate().expect("a valid multi-tenant configuration");
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_on_their_own_hosts_topics_and_budgets_and_a_token_rotated_mid_run() {
    require_redis();
    require_nats();
    let dir = tempfile::tempdir().unwrap();
    let tag = tag();
    let tenants = start_tenants(
        dir.path(),
        vec![
            ("acme", vec!["exchange:dlp", "box:ransomware"], 40),
            (
                "beta",
                vec!["exchange:dlp", "onedrive:securityrisk", "gmail:ransomware"],
                30,
            ),
            ("gamma", vec!["teams:dlp"], 20),
        ],
        100,
    )
    .await;
    let mut cfg = fleet(&tenants.iter().collect::<Vec<_>>(), &tag);
    cfg.window.start_from = StartFrom::Ago(Duration::from_secs(600));
    assert_eq!(cfg.all_shards().unwrap().len(), 6);
    prepare_stream(&cfg).await;

    let t0 = Utc::now();
    let mut procs: Vec<BridgeProcess> = (0..2)
        .map(|i| {
            BridgeProcess::spawn(
                &cfg,
                &format!("p{i}"),
                &dir.path().join(format!("p{i}.log")),
            )
        })
        .collect();
    let obs = observer(&cfg).await;
    wait_cursor_in(&obs, &cfg, t0, Duration::from_secs(120)).await;

    // Rotation: beta's API accepts the old and the new token; the file is
    // rewritten (as a Secret update does); later the old one is revoked.
    let beta = &tenants[1];
    beta.sim
        .state
        .set_tokens(vec!["token-of-beta".into(), "token-of-beta-2".into()]);
    let rotated_at = Utc::now().timestamp_millis();
    std::fs::write(&beta.token_file, "token-of-beta-2\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first_use = loop {
        let log = beta.sim.state.stats().log;
        if let Some(r) = log
            .iter()
            .find(|r| r.at_ms >= rotated_at && r.token == Some(1))
        {
            break r.at_ms - rotated_at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new token was not used within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A few requests with the new token before it is revoked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while beta
        .sim
        .state
        .stats()
        .log
        .iter()
        .filter(|r| r.token == Some(1))
        .count()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new token was not used three times within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Revoked: its place in the list stays taken, so the log's indexes
    // keep their meaning (1 is the new token).
    beta.sim
        .state
        .set_tokens(vec!["revoked".into(), "token-of-beta-2".into()]);
    // A replica started after the rotation holds only the new token: it
    // must count in the same budget as the one still running since before
    // (or together they would exceed it: the simulator would answer 429).
    assert!(procs[1].terminate().success(), "graceful exit");
    procs[1] = BridgeProcess::spawn(&cfg, "p1", &dir.path().join("p1-again.log"));
    let t1 = Utc::now();
    wait_cursor_in(
        &obs,
        &cfg,
        t1 + chrono::Duration::seconds(15),
        Duration::from_secs(120),
    )
    .await;
    // The operator's view, per tenant.
    let op_log = dir.path().join("op.log");
    let out = operator(&cfg, &op_log, &["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for t in &tenants {
        let line = format!("budget of {}: ", t.name);
        let used: u32 = text
            .split(&line)
            .nth(1)
            .and_then(|r| r.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line} missing:\n{text}"));
        // The fleet's count, beta's too after its rotation (the key stays).
        assert!(used > 0, "{line}{used}: not the fleet's budget key");
        assert!(
            text.contains(&format!("/{} in the last minute", t.per_minute)),
            "{text}"
        );
        for s in shards(t) {
            let row = format!("{}:{}:{} ", t.name, s.service, s.event);
            assert!(text.contains(&row), "{row} missing:\n{text}");
        }
    }
    // JSON: each tenant's budget under `tenants`, none repeated at the top.
    let out = operator(&cfg, &op_log, &["status", "--json"]);
    assert!(out.status.success());
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for top in [
        "budget_last_minute",
        "budget_today",
        "per_minute",
        "per_day",
    ] {
        assert!(st.get(top).is_none(), "{top} at the top level: {st}");
    }
    let named: Vec<&str> = st["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    assert_eq!(named.len(), tenants.len(), "{st}");
    for t in &tenants {
        assert!(named.contains(&t.name), "{} missing: {st}", t.name);
    }
    let out = operator(
        &cfg,
        &op_log,
        &["checkpoint", "show", "--tenant", "gamma", "--json"],
    );
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown.as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(shown[0]["shard"], "gamma:teams:dlp");
    assert!(shown[0]["cursor"].is_string(), "{shown}");
    let out = operator(
        &cfg,
        &op_log,
        &["checkpoint", "show", "--pair", "teams:dlp"],
    );
    assert!(
        !out.status.success(),
        "several tenants: --tenant is required"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant"));
    for p in &mut procs {
        assert!(p.terminate().success(), "graceful exit");
    }

    let got = read_nats(NATS_URL, &cfg.sink.nats.stream).await;
    let check_to = t1;
    let from = t0 - chrono::Duration::seconds(590);
    // The oracle: each simulator's own ids, on topics written out here.
    let mut owner: HashMap<String, &str> = HashMap::new();
    for t in &tenants {
        for s in shards(t) {
            for id in t
                .sim
                .state
                .truth(&s, t0 - chrono::Duration::hours(1), Utc::now())
            {
                assert!(
                    owner.insert(id, t.name).is_none(),
                    "the simulators' ids must differ"
                );
            }
        }
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    let mut per_tenant: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &got {
        let tenant = owner
            .get(&m.id)
            .unwrap_or_else(|| panic!("{} on {} is no simulator's event", m.id, m.topic));
        let service = m.doc["service"].as_str().unwrap();
        let event = m.doc["event"].as_str().unwrap();
        assert_eq!(
            m.topic,
            format!("{tag}.{tenant}.{service}.{event}"),
            "{} of {tenant} on another tenant's topic",
            m.id
        );
        assert_eq!(m.doc["tenant"], *tenant);
        assert_eq!(
            m.headers.get("cas-tenant").map(String::as_str),
            Some(*tenant)
        );
        *count.entry(m.id.as_str()).or_default() += 1;
        *per_tenant.entry(tenant).or_default() += 1;
    }
    for t in &tenants {
        let mut missing = 0;
        let mut want = 0;
        for s in shards(t) {
            for id in t.sim.state.truth(&s, from, check_to) {
                want += 1;
                if !count.contains_key(id.as_str()) {
                    missing += 1;
                }
            }
        }
        let st = t.sim.state.stats();
        let max = st.max_in_any(Duration::from_secs(60));
        let refused: Vec<_> = st.log.iter().filter(|r| r.status == 401).collect();
        println!(
            "{}: {want} expected, {missing} missing, {} received; {} requests, max {max} in any 60 s (budget {}), 429: {}, 401: {}",
            t.name,
            per_tenant.get(t.name).copied().unwrap_or(0),
            st.served,
            t.per_minute,
            st.throttled,
            refused.len()
        );
        assert!(want > 0, "{}: the checked range holds no event", t.name);
        assert_eq!(missing, 0, "{}: events missing", t.name);
        assert_eq!(st.throttled, 0, "{}: no 429", t.name);
        assert!(
            max as u32 <= t.per_minute,
            "{}: {max} in one minute",
            t.name
        );
        if t.name != "beta" {
            assert!(refused.is_empty(), "{}: its token was refused", t.name);
        }
    }
    let dup: usize = count.values().map(|n| n - 1).sum();
    assert_eq!(dup, 0, "JetStream removes duplicates by id");
    // After the rotation (plus the requests in flight then), beta's API
    // saw only the new token.
    let log = beta.sim.state.stats().log;
    // Once the new token was used, the old one reaches the API only on
    // requests already on their way then: at most the pages in flight.
    let first_new = log
        .iter()
        .position(|r| r.token == Some(1))
        .expect("the new token was used");
    let old_after = log[first_new..]
        .iter()
        .filter(|r| r.token == Some(0))
        .count();
    let new_uses = log.iter().filter(|r| r.token == Some(1)).count();
    println!("beta: the new token first used {first_use} ms after the file changed; {new_uses} requests with it; old token after its first use: {old_after}");
    assert!(
        old_after <= cas_bridge::schedule::PAGES_IN_FLIGHT,
        "the old token reached the API {old_after} times after the new one was in use"
    );
    let seen: HashSet<&str> = per_tenant.keys().copied().collect();
    assert_eq!(seen.len(), 3);
    for t in tenants {
        t.sim.stop().await;
    }
}

/// Waits until `log` holds `text`.
async fn wait_log(log: &std::path::Path, text: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{text}` not in {} within {within:?}:\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_added_and_one_removed_by_editing_the_file_while_two_replicas_run() {
    require_redis();
    require_nats();
    let dir = tempfile::tempdir().unwrap();
    let tag = tag();
    let tenants = start_tenants(
        dir.path(),
        vec![
            ("acme", vec!["exchange:dlp", "box:ransomware"], 0),
            ("beta", vec!["onedrive:securityrisk"], 0),
            ("gamma", vec!["teams:dlp", "gmail:ransomware"], 0),
        ],
        200,
    )
    .await;
    let cfg = fleet(&[&tenants[0], &tenants[1]], &tag);
    prepare_stream(&cfg).await;
    let t0 = Utc::now();
    let logs: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("p{i}.log")))
        .collect();
    let mut procs: Vec<BridgeProcess> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| BridgeProcess::spawn(&cfg, &format!("p{i}"), log))
        .collect();
    let obs = observer(&cfg).await;
    wait_cursor_in(&obs, &cfg, t0, Duration::from_secs(90)).await;

    // A file that does not load is refused; the configuration in force stays.
    for log in &logs {
        std::fs::write(log.with_extension("yaml"), "window:\n  max: 9d\n").unwrap();
    }
    for log in &logs {
        wait_log(
            log,
            "the changed configuration file is refused",
            Duration::from_secs(15),
        )
        .await;
    }
    let t1 = Utc::now();
    wait_cursor_in(&obs, &cfg, t1, Duration::from_secs(60)).await;

    // acme removed, gamma added.
    let mut next = cfg.clone();
    next.tenants = vec![spec(&tenants[1]), spec(&tenants[2])];
    next.validate().unwrap();
    for (i, log) in logs.iter().enumerate() {
        write_config(&next, &format!("p{i}"), log);
    }
    let changed = Utc::now();
    for log in &logs {
        wait_log(
            log,
            "configuration changed: now in force",
            Duration::from_secs(30),
        )
        .await;
    }
    wait_cursor_in(
        &obs,
        &next,
        changed + chrono::Duration::seconds(10),
        Duration::from_secs(120),
    )
    .await;
    let acme: Vec<Shard> = shards(&tenants[0])
        .iter()
        .map(|s| Shard::of("acme", &*s.service, &*s.event))
        .collect();
    let st = obs.status(&acme).await.unwrap();
    for s in &st.shards {
        assert!(s.owner.is_none(), "removed tenant's lease released: {s:?}");
        assert!(s.cursor.is_some(), "removed tenant's cursor kept: {s:?}");
    }
    let quiet_from = changed.timestamp_millis() + 5_000;
    let acme_after = tenants[0]
        .sim
        .state
        .stats()
        .log
        .iter()
        .filter(|r| r.at_ms > quiet_from)
        .count();
    for p in &mut procs {
        assert!(p.terminate().success(), "graceful exit");
    }
    assert_eq!(
        acme_after, 0,
        "the removed tenant's API was asked after the change"
    );

    // gamma's history since t0 − 590 s (its start) is delivered on its topics.
    let got = read_nats(NATS_URL, &cfg.sink.nats.stream).await;
    let ids: HashSet<&str> = got
        .iter()
        .filter(|m| m.topic.starts_with(&format!("{tag}.gamma.")))
        .map(|m| m.id.as_str())
        .collect();
    let mut want = 0;
    for s in shards(&tenants[2]) {
        for id in tenants[2]
            .sim
            .state
            .truth(&s, changed - chrono::Duration::seconds(590), changed)
        {
            want += 1;
            assert!(ids.contains(id.as_str()), "gamma's {id} missing");
        }
    }
    println!("gamma: {want} events of its history delivered after it was added; acme asked {acme_after} times after its removal");
    assert!(want > 0);
    for t in tenants {
        t.sim.stop().await;
    }
}

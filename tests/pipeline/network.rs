//! The enterprise network, on loopback: the API (the simulator behind a
//! TLS front with a private CA) reached through a real forward proxy.

use std::time::Duration;

use cas_bridge::cas::Client;
use cas_bridge::config::SinkKind;
use cas_bridge::coord::memory::MemoryBudget;
use cas_bridge::coord::{Budget, Priority};
use cas_bridge::source::PageSource;
use secrecy::SecretString;

use crate::helpers::*;

/// The request lines tinyproxy logged.
fn proxied(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("): ").map(|(_, r)| r.to_string()))
        .filter(|r| r.ends_with("HTTP/1.1") || r.ends_with("HTTP/1.0"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_through_a_forward_proxy_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let sim = start_sim(cas_bridge::sim::SimConfig {
        https_links: true,
        ..sim_config()
    })
    .await;
    let front = tls_front(&certs, sim.addr.port());
    let (proxy, log) = tinyproxy(dir.path());
    let tag = tag();
    let mut cfg = bridge_config(&sim, &tag, SinkKind::Jsonl);
    cfg.sink.jsonl.path = dir.path().join("events.jsonl").display().to_string();
    let api = format!("https://127.0.0.1:{}", front.port);
    cfg.api.base_url = Some(api.clone());
    cfg.api.proxy = Some(format!("http://127.0.0.1:{}", proxy.port));
    cfg.api.ca_file = Some(certs.ca.clone());
    cfg.validate().unwrap();

    let (run, range) = Running::caught_up(&cfg).await;
    run.stop().await;
    let r = assert_delivered("proxy", &sim, &cfg, range.from, range.to).await;
    assert!(r.expected > 100, "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");

    // The proxy saw CONNECT tunnels to the API and nothing else: every
    // request (and its token) travelled inside TLS.
    let lines = proxied(&log);
    let tunnel = format!("CONNECT 127.0.0.1:{} HTTP/1.1", front.port);
    assert!(!lines.is_empty(), "the proxy logged no request");
    assert!(
        lines.iter().all(|l| *l == tunnel),
        "the proxy saw more than CONNECT tunnels: {lines:?}"
    );
    let tunnels = lines.len();
    println!(
        "proxy: {tunnels} CONNECT tunnels for {} requests",
        sim.state.stats().served
    );

    // Without the private CA the API's certificate is refused.
    let budget = MemoryBudget::new(cfg.budget.clone());
    let token = || SecretString::from("sim-token".to_string());
    let shard = "exchange:dlp".parse().unwrap();
    let window = cas_bridge::window::Window {
        start: range.from,
        end: range.to,
    };
    let mut untrusting = cfg.api.clone();
    untrusting.ca_file = None;
    let c = Client::new(&untrusting, token()).unwrap();
    let url = c.first_page(&shard, &window);
    let e = c
        .fetch(budget.acquire(Priority::Active).await.unwrap(), &url)
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );
    // That attempt went through the proxy too.
    let wait_for = |n: usize, what: &'static str| {
        let log = log.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while proxied(&log).len() < n {
                assert!(tokio::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(proxied(&log).len(), n, "{what}");
        }
    };
    wait_for(tunnels + 1, "the refused attempt was not proxied").await;

    // HTTPS_PROXY is honoured when api.proxy is not set, and NO_PROXY
    // sends a host past it (each test runs in a process of its own).
    let mut from_env = cfg.api.clone();
    from_env.proxy = None;
    std::env::set_var("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port));
    let c = Client::new(&from_env, token()).unwrap();
    c.fetch(budget.acquire(Priority::Active).await.unwrap(), &url)
        .await
        .unwrap();
    wait_for(tunnels + 2, "HTTPS_PROXY was not used").await;
    std::env::set_var("NO_PROXY", "127.0.0.1");
    let c = Client::new(&from_env, token()).unwrap();
    c.fetch(budget.acquire(Priority::Active).await.unwrap(), &url)
        .await
        .unwrap();
    // A line would be logged as the tunnel opens, before the answer came
    // back; give a stray one a moment anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        proxied(&log).len(),
        tunnels + 2,
        "NO_PROXY was not honoured"
    );
    sim.stop().await;
}

//! Redis as production runs it: TLS only, with a private CA, an ACL user
//! and a client certificate; and a master watched by Redis Sentinel that
//! is killed mid-run, a replica promoted, the fleet following it.

use std::time::{Duration, Instant};

use cas_bridge::config::{Config, SinkKind};
use chrono::Utc;
use secrecy::SecretString;

use crate::helpers::*;

/// Waits until every cursor passed `to` by 15 s (late events re-read).
async fn caught_up_to(
    obs: &cas_bridge::coord::redis::RedisCoord,
    cfg: &Config,
    to: chrono::DateTime<Utc>,
) {
    let past = to + chrono::Duration::seconds(15);
    wait_cursor_in(obs, cfg, past, Duration::from_secs(90)).await;
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_redis_with_a_private_ca_an_acl_user_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let port = free_port();
    let p = port.to_string();
    let (cert, key, ca) = (
        certs.server_cert.display().to_string(),
        certs.server_key.display().to_string(),
        certs.ca.display().to_string(),
    );
    let _redis = OwnRedis::start_with(
        port,
        &args(&[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &p,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "yes",
            "--user",
            "default",
            "off",
            "--user",
            "bridge",
            "on",
            ">s3cret",
            "~*",
            "&*",
            "+@all",
        ]),
    );
    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let url = format!("rediss://bridge:s3cret@127.0.0.1:{port}");
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Jsonl, &url, &tag);
    cfg.sink.jsonl.path = dir.path().join("events.jsonl").display().to_string();
    cfg.coord.tls_ca_file = Some(certs.ca.clone());
    cfg.coord.tls_cert_file = Some(certs.client_cert.clone());
    cfg.coord.tls_key_file = Some(certs.client_key.clone());
    cfg.validate().unwrap();

    // Each missing piece is refused with what was wrong.
    let refused = |c: Config| async move {
        let token = SecretString::from("sim-token");
        match c.redis_coordination(&token).await {
            Ok(_) => panic!("connected without everything Redis asks for"),
            // The error with its causes, as the logs show it.
            Err(e) => cas_bridge::field::chain(&e).to_string(),
        }
    };
    let mut no_ca = cfg.clone();
    no_ca.coord.tls_ca_file = None;
    let e = refused(no_ca).await;
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let mut no_client_cert = cfg.clone();
    no_client_cert.coord.tls_cert_file = None;
    no_client_cert.coord.tls_key_file = None;
    let e = refused(no_client_cert).await;
    assert!(!e.is_empty(), "{e}");
    let mut wrong_password = cfg.clone();
    wrong_password.coord.redis_url = Some(format!("rediss://bridge:nope@127.0.0.1:{port}").into());
    let e = refused(wrong_password).await;
    assert!(e.to_lowercase().contains("authentication failed"), "{e}");

    // With all of it, the fleet member works and delivers everything.
    let fleet = Fleet::caught_up(&[(&cfg, "tls-a")]).await;
    let t0 = fleet.t0;
    let to = t0 - chrono::Duration::seconds(3);
    caught_up_to(&fleet.observer, &cfg, to).await;
    fleet.stop().await;
    let r = assert_delivered(
        "redis tls",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(590),
        to,
    )
    .await;
    assert!(r.expected > 100, "{r:?}");
    assert_eq!(r.duplicated, 0, "{r:?}");
    sim.stop().await;
}

/// Waits until `sentinel` names a master for `name` other than `not`, and
/// returns it.
fn master_named(sentinel: u16, name: &str, not: Option<u16>, within: Duration) -> u16 {
    let deadline = Instant::now() + within;
    loop {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &sentinel.to_string(),
                "SENTINEL",
                "get-master-addr-by-name",
                name,
            ])
            .output()
            .expect("redis-cli runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some(port) = text
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u16>().ok())
        {
            if Some(port) != not {
                return port;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel named no new master: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the replica on `port` is in sync with its master.
fn replica_in_sync(port: u16) -> bool {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "replication"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).contains("master_link_status:up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_follows_a_sentinel_fail_over_and_loses_nothing() {
    require_nats();
    let dir = tempfile::tempdir().unwrap();
    let (mp, rp, sp) = (free_port(), free_port(), free_port());
    let master = OwnRedis::start_on(mp);
    let _replica = OwnRedis::start_with(
        rp,
        &args(&[
            "--bind",
            "127.0.0.1",
            "--port",
            &rp.to_string(),
            "--replicaof",
            "127.0.0.1",
            &mp.to_string(),
        ]),
    );
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "bind 127.0.0.1\nport {sp}\ndir {}\nsentinel monitor m 127.0.0.1 {mp} 1\nsentinel down-after-milliseconds m 1000\nsentinel failover-timeout m 5000\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _sentinel = OwnRedis::start_with(sp, &args(&[conf.to_str().unwrap(), "--sentinel"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica_in_sync(rp) {
        assert!(Instant::now() < deadline, "the replica did not sync");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(master_named(sp, "m", None, Duration::from_secs(10)), mp);

    let sim = start_sim(sim_config()).await;
    let tag = tag();
    let mut cfg = fleet_config(&sim, &tag, SinkKind::Nats, "redis://sentinel/0", &tag);
    cfg.coord.sentinel_master = Some("m".into());
    cfg.coord.sentinels = vec![format!("127.0.0.1:{sp}")];
    cfg.validate().unwrap();
    prepare_stream(&cfg).await;
    let fleet = Fleet::caught_up(&[(&cfg, "sentinel-a"), (&cfg, "sentinel-b")]).await;
    let (obs, t0) = (fleet.observer.clone(), fleet.t0);

    // The master dies; the sentinel promotes the replica.
    let killed = Instant::now();
    let killed_at = Utc::now();
    master.stop();
    let new = master_named(sp, "m", Some(mp), Duration::from_secs(30));
    assert_eq!(new, rp);
    let promoted = killed.elapsed();
    // Every shard checkpoints on the new master past the moment of the kill.
    wait_cursor_in(
        &obs,
        &cfg,
        killed_at + chrono::Duration::seconds(5),
        Duration::from_secs(120),
    )
    .await;
    let followed = killed.elapsed();
    println!(
        "sentinel fail-over: replica promoted {:.1} s after the kill, every shard checkpointed past it {:.1} s after",
        promoted.as_secs_f64(),
        followed.as_secs_f64()
    );
    let to = Utc::now() - chrono::Duration::seconds(20);
    caught_up_to(&obs, &cfg, to).await;
    fleet.stop().await;
    let r = assert_delivered(
        "sentinel",
        &sim,
        &cfg,
        t0 - chrono::Duration::seconds(590),
        to,
    )
    .await;
    assert!(r.expected > 300, "{r:?}");
    assert_eq!(
        r.duplicated, 0,
        "JetStream drops the re-read window's ids: {r:?}"
    );
    sim.stop().await;
}

//! The servers the tests need: the shared ones (fail with how to start
//! them when absent) and ones a test owns (NATS, Redis) on their own ports.
use std::time::Duration;

pub const NATS_URL: &str = "nats://127.0.0.1:4222";

pub fn kafka_brokers() -> String {
    std::env::var("CAS_BRIDGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// Fails (never skips) when a server the test needs is not there.
pub fn require_server(addr: &str, how: &str) {
    let a = addr.trim_start_matches("nats://");
    if std::net::TcpStream::connect_timeout(&a.parse().expect("addr"), Duration::from_secs(2))
        .is_err()
    {
        panic!("this test needs a server at {addr}, which is not answering. Start it with: {how}");
    }
}

pub fn require_nats() {
    require_server(
        "127.0.0.1:4222",
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server (or ./scripts/test, which starts everything)",
    );
}

pub fn require_kafka() {
    require_server(
        &kafka_brokers(),
        "tansu broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ (./scripts/test installs and starts it)",
    );
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with JetStream that the test owns (stopped on drop).
pub struct OwnNats {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnNats {
    pub fn start() -> Self {
        let mut n = OwnNats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A server whose `max_payload` is `bytes` (set in a config file: the
    /// command line has no flag for it).
    pub fn start_with_max_payload(bytes: usize) -> Self {
        let mut n = OwnNats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        let conf = n.dir.path().join("nats.conf");
        std::fs::write(&conf, format!("max_payload: {bytes}\n")).unwrap();
        n.launch(&["-c", conf.to_str().unwrap()]);
        n
    }

    /// A server configured by `conf` (a nats-server configuration file's
    /// text: TLS, authorization), on its own port, JetStream in its own
    /// directory.
    pub fn start_with_conf(conf: &str) -> Self {
        let mut n = OwnNats {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        let file = n.dir.path().join("nats.conf");
        std::fs::write(&file, conf).unwrap();
        n.launch(&["-c", file.to_str().unwrap()]);
        n
    }

    /// Starts the server (again), on the same port and store directory.
    pub fn restart(&mut self) {
        self.launch(&[]);
    }

    fn launch(&mut self, extra: &[&str]) {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "nats-server",
        ]
        .into_iter()
        .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
        .unwrap();
        let child = std::process::Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}); install it with apt-get install nats-server"
                )
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.stop();
    }
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn require_redis() {
    require_server(
        "127.0.0.1:6379",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no (or ./scripts/test)",
    );
}

/// A redis-server the test owns, on its own port (stopped on drop).
pub struct OwnRedis {
    pub port: u16,
    child: std::process::Child,
    /// Its working directory: a replica's sync file lands here, not in
    /// the checkout (removed on drop).
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Stops the server (the port stays reserved for [`OwnRedis::start_on`]).
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    pub fn start_on(port: u16) -> Self {
        let args: Vec<String> = ["--bind", "127.0.0.1", "--port", &port.to_string()]
            .iter()
            .map(|a| a.to_string())
            .collect();
        Self::start_with(port, &args)
    }

    /// `redis-server ARGS` (nothing kept on disk), once `port` accepts
    /// connections: a TLS-only server, a replica, a sentinel.
    pub fn start_with(port: u16, args: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(args)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it with apt-get install redis-server"
                )
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends a signal: `-STOP` makes a Redis that accepts connections and
    /// answers nothing (a hung server), `-CONT` wakes it.
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

/// Sends `sig` (`-STOP`, `-CONT`, …) to process `pid` without waiting.
pub fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid} failed");
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port for a Redis Cluster node: free, and so is its bus port (port +
/// 10000), both below 65536.
pub fn cluster_port() -> u16 {
    use rand::Rng;
    loop {
        let p: u16 = rand::rng().random_range(20_000..45_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(p) && free(p + 10_000) {
            return p;
        }
    }
}

/// What `redis-cli -p PORT ARGS…` printed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install redis-tools"));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A Redis Cluster the test owns: `masters` masters with one replica each,
/// from `redis-server --cluster-enabled yes`, joined with `redis-cli
/// --cluster create` (stopped on drop).
pub struct OwnCluster {
    pub nodes: Vec<OwnRedis>,
}

impl OwnCluster {
    pub fn start(masters: usize) -> Self {
        let nodes: Vec<OwnRedis> = (0..masters * 2)
            .map(|_| {
                let port = cluster_port();
                let p = port.to_string();
                let args: Vec<String> = [
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &p,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{p}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                    // A replica takes over however long its master was
                    // quiet (an idle link otherwise counts as stale data).
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .iter()
                .map(|a| a.to_string())
                .collect();
                OwnRedis::start_with(port, &args)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Self { nodes };
        c.wait_ok(masters, Duration::from_secs(30));
        c
    }

    /// Waits until every live node says the cluster is ok and `masters`
    /// nodes are masters.
    pub fn wait_ok(&self, masters: usize, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let ok = self
                .nodes
                .iter()
                .all(|n| redis_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok && self.masters().len() == masters {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster is not ok: {}",
                redis_cli(self.nodes[0].port, &["CLUSTER", "NODES"])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| redis_cli(n.port, &["ROLE"]).starts_with("master"))
            .map(|n| n.port)
            .collect()
    }

    /// The seed nodes' `host:port` (every node).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// Kills the node on `port` (a master: its replica is promoted after
    /// the node timeout).
    pub fn kill(&mut self, port: u16) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of the cluster");
        self.nodes.remove(i).stop();
    }
}

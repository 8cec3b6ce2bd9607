//! The real binary: its configuration file and the process.
use std::time::Duration;

use cas_bridge::config::Config;

/// Writes `cfg` as the file a bridge process reads (YAML, in its JSON
/// form), with this worker's id, quiet logs, an ephemeral ops port and the
/// simulator's token in a token file. Returns the file's path.
pub fn write_config(cfg: &Config, worker: &str, log: &std::path::Path) -> std::path::PathBuf {
    let token = log.with_extension("token");
    std::fs::write(&token, "sim-token").unwrap();
    let mut c = cfg.clone();
    c.api.token = None;
    c.api.token_file = Some(token);
    c.coord.worker_id = Some(worker.into());
    // TEST_LOG (a tracing filter) makes the processes' logs louder when a
    // run needs looking into.
    c.log.level = std::env::var("TEST_LOG").unwrap_or("warn".into());
    c.ops.listen = "127.0.0.1:0".into();
    let file = log.with_extension("yaml");
    std::fs::write(&file, c.redacted_json()).unwrap();
    // The file is read back by the bridge's own loader: what it holds is
    // what the test configured.
    let back = Config::load_from(Some(&file), Vec::new()).expect("the written config loads");
    assert_eq!(back.redacted_json(), c.redacted_json());
    file
}

/// A bridge process (the real binary), killed on drop.
pub struct BridgeProcess {
    pub child: std::process::Child,
    /// Its stderr (the log), shown when it exits badly.
    pub log: std::path::PathBuf,
}

impl BridgeProcess {
    /// Starts `cas-bridge run` with `cfg` written to a configuration file
    /// beside `log` (the token in a token file): every field reaches the
    /// binary, none is mapped by hand.
    pub fn spawn(cfg: &Config, worker: &str, log: &std::path::Path) -> Self {
        Self::spawn_with(cfg, worker, log, &[])
    }

    /// As [`BridgeProcess::spawn`], with extra `CAS_BRIDGE__*` variables (without the prefix).
    pub fn spawn_with(
        cfg: &Config,
        worker: &str,
        log: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let file = write_config(cfg, worker, log);
        let env: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let logf = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cas-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env_clear()
            .envs(
                env.into_iter()
                    .map(|(k, v)| (format!("CAS_BRIDGE__{k}"), v)),
            )
            .stdout(std::process::Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("the cas-bridge binary starts");
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`, …) without waiting.
    pub fn signal(&self, sig: &str) {
        super::signal(self.child.id(), sig);
    }

    /// SIGKILL: no shutdown, no release.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                if !st.success() {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    eprintln!(
                        "{} exited {st}; its last log lines (newest first):\n{}",
                        self.log.display(),
                        tail.join("\n")
                    );
                }
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bridge did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an operator's command of the binary (`checkpoint …`, `replay …`)
/// with `cfg` written beside `log` as for a bridge process; returns its
/// output once it exits.
pub fn operator(cfg: &Config, log: &std::path::Path, args: &[&str]) -> std::process::Output {
    let file = write_config(cfg, "operator", log);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cas-bridge"))
        .arg("--config")
        .arg(&file)
        .args(args)
        .env_clear()
        .output()
        .expect("the cas-bridge binary starts");
    eprintln!(
        "cas-bridge {}: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

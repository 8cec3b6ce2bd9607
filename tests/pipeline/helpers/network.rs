//! What stands between the bridge and its servers in an enterprise
//! network, made real on loopback: a private CA and its certificates
//! (openssl), a TLS front for the simulator (socat), a forward proxy
//! (tinyproxy).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

/// A private CA, a server certificate for 127.0.0.1 and localhost, and a
/// client certificate, all signed by it (PEM files in `dir`).
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn make(dir: &Path) -> Self {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=cas-bridge test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        for (name, ext) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
            ("client", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            openssl(
                dir,
                &[
                    "req", "-new", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"),
                    "-subj", &format!("/CN={name}"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem",
                    "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                    "-out", &format!("{name}.pem"), "-extfile", &format!("{name}.ext"),
                ],
            );
        }
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A child process killed on drop.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (10 s at most) until something listens on `port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// TLS on a port of its own, forwarded in clear to `backend` (the
/// simulator): `https://127.0.0.1:<port>` with the certificate of `certs`.
pub fn tls_front(certs: &Certs, backend: u16) -> Daemon {
    let port = free_port();
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            certs.server_cert.display(),
            certs.server_key.display()
        ))
        .arg(format!("TCP:127.0.0.1:{backend}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat runs (Debian package socat; scripts/test installs it)");
    wait_listening(port, "socat");
    Daemon { child, port }
}

/// A forward proxy (tinyproxy) on loopback, logging every request line to
/// `<dir>/tinyproxy.log`.
pub fn tinyproxy(dir: &Path) -> (Daemon, PathBuf) {
    let port = free_port();
    let log = dir.join("tinyproxy.log");
    let conf = dir.join("tinyproxy.conf");
    // No ConnectPort line: CONNECT to any port (the TLS front's is random).
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\nAllow 127.0.0.1\nLogFile \"{}\"\nLogLevel Info\n",
            log.display()
        ),
    )
    .unwrap();
    let child = Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tinyproxy runs (Debian package tinyproxy; scripts/test installs it)");
    wait_listening(port, "tinyproxy");
    (Daemon { child, port }, log)
}

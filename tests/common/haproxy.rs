//! Real HAProxy (Debian's package) in TCP mode in front of proxies under test.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
};

use super::wait_until;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy, killed when dropped.
pub struct Haproxy {
    child: Child,
    /// Where it listens, one address per frontend.
    pub frontends: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// One frontend per `(send option, backend address)`, each on a loopback port of
    /// its own (returned in the same order).
    pub fn start(backends: &[(&str, SocketAddr)]) -> Haproxy {
        let mut sections = String::new();
        let mut frontends = Vec::new();
        for (index, (send, backend)) in backends.iter().enumerate() {
            let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            sections.push_str(&format!(
                "frontend f{index}\n  bind {frontend}\n  default_backend b{index}\nbackend b{index}\n  server proxy {backend} {send}\n"
            ));
            frontends.push(frontend);
        }
        Haproxy::run(&sections, frontends)
    }

    /// One frontend spreading connections over `servers` in turn (`balance
    /// roundrobin`), each sent with `send` (`send-proxy-v2`, say).
    pub fn round_robin(servers: &[SocketAddr], send: &str) -> Haproxy {
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut sections = format!(
            "frontend f\n  bind {frontend}\n  default_backend b\nbackend b\n  balance roundrobin\n"
        );
        for (index, server) in servers.iter().enumerate() {
            sections.push_str(&format!("  server p{index} {server} {send}\n"));
        }
        Haproxy::run(&sections, vec![frontend])
    }

    fn run(sections: &str, frontends: Vec<SocketAddr>) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n{sections}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{config}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for frontend in &frontends {
            wait_until("HAProxy listens", || {
                std::net::TcpStream::connect(frontend).is_ok()
            });
        }
        Haproxy {
            child,
            frontends,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

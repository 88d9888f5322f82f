//! Shared helpers for the device tests.

use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python virtual environment holding the peers (`scripts/peers` creates it), if present.
/// Tests of peers fail when `LABWRIGHT_REQUIRE_PEERS=1` (CI) and it is missing, and are skipped
/// with a message otherwise.
pub fn peers_python() -> Option<PathBuf> {
    venv_python("LABWRIGHT_PEERS_VENV", ".peers")
}

/// The Python 3.12 virtual environment holding Opentrons' protocol engine (`scripts/peers`),
/// required and skipped like [`peers_python`].
pub fn engine_python() -> Option<PathBuf> {
    venv_python("LABWRIGHT_ENGINE_VENV", ".peers-engine")
}

fn venv_python(variable: &str, default: &str) -> Option<PathBuf> {
    let py = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| repo().join(default)).join("bin/python");
    if py.exists() {
        return Some(py);
    }
    if std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("peer tests are required but {} is missing: run scripts/peers", py.display());
    }
    eprintln!("skipping a peer test: {} is missing (run scripts/peers)", py.display());
    None
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on the port.
pub async fn wait_port(port: u16, secs: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("nothing listens on port {port} after {secs} s");
}

/// Kills a child process when dropped (tests must not leak peers).
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! Test certificates, shared by the test suites of `devices` and `labd` (each includes this file
//! with `#[path]`; it is not part of any crate's product).

use std::path::Path;

fn openssl(dir: &Path, args: &[&str]) {
    let ok = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(ok.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&ok.stderr));
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl tool in
/// `dir` (as `ca.pem`, `server.pem`, `server.key`). Returns (CA PEM, server cert PEM, server
/// key PEM).
pub fn certificates(dir: &Path) -> (String, String, String) {
    let ca = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Labwright test CA"];
    openssl(dir, &[&ca[..], &["-keyout", "ca.key", "-out", "ca.pem"]].concat());
    let csr = ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"];
    openssl(dir, &[&csr[..], &["-keyout", "server.key", "-out", "server.csr"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let sign = ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
    openssl(dir, &[&sign[..], &["-days", "2", "-extfile", "ext.cnf", "-out", "server.pem"]].concat());
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    (read("ca.pem"), read("server.pem"), read("server.key"))
}

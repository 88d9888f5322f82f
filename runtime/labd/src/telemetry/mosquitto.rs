//! Mosquitto's password and ACL files for Labwright's identities (`labd mqtt-config`).
//!
//! Passwords use Mosquitto 2's `$7$` format: PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte
//! salt, `$7$101$<base64 salt>$<base64 hash>` — what `mosquitto_passwd` writes, so the broker
//! checks them itself and Labwright never stores a password in the clear.

use super::{MqttIdentity, RUNTIME_USER};
use crate::secret::{random_bytes, NoRandomness};
use base64::Engine;
use subtle::ConstantTimeEq;

const ITERATIONS: u32 = 101;

/// PBKDF2-HMAC-SHA512 with one 64-byte output block.
fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    pbkdf2::pbkdf2_hmac_array::<sha2::Sha512, 64>(password, salt, iterations)
}

/// The `$7$` hash of a password with this salt.
pub fn password_hash_with_salt(password: &str, salt: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let hash = pbkdf2_sha512(password.as_bytes(), salt, ITERATIONS);
    format!("$7${ITERATIONS}${}${}", b64.encode(salt), b64.encode(hash))
}

/// The `$7$` hash of a password with a fresh random salt.
pub fn password_hash(password: &str) -> Result<String, NoRandomness> {
    let salt: [u8; 12] = random_bytes("a password salt")?;
    Ok(password_hash_with_salt(password, &salt))
}

/// Whether a password matches a `$7$` hash (what the broker does).
pub fn verify(password: &str, hash: &str) -> bool {
    let parts: Vec<&str> = hash.split('$').collect();
    let [_, "7", iterations, salt, expected] = parts.as_slice() else { return false };
    let (Ok(iterations), Ok(salt)) =
        (iterations.parse::<u32>(), base64::engine::general_purpose::STANDARD.decode(salt))
    else {
        return false;
    };
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(expected) else { return false };
    // In constant time: how much of a guess matched must not show in how long the check took.
    let got = pbkdf2_sha512(password.as_bytes(), &salt, iterations);
    got.as_slice().ct_eq(expected.as_slice()).into()
}

/// A random password (192 bits, URL-safe).
pub fn new_password() -> Result<String, NoRandomness> {
    let bytes: [u8; 24] = random_bytes("an MQTT password")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The password file: the runtime's identity and every live principal's.
pub fn password_file(runtime_hash: &str, identities: &[MqttIdentity]) -> String {
    let mut out = format!("{RUNTIME_USER}:{runtime_hash}\n");
    for i in identities {
        out.push_str(&format!("{}:{}\n", i.username, i.password_hash));
    }
    out
}

/// The ACL file: only the runtime writes; each identity reads its own subtree.
pub fn acl_file(identities: &[MqttIdentity]) -> String {
    let mut out = String::from(
        "# Written by `labd mqtt-config`; regenerate after adding tenants or tokens, then `kill -HUP` the broker.\n\n",
    );
    out.push_str(&format!("user {RUNTIME_USER}\ntopic write lab/v1/#\n\n"));
    for i in identities {
        out.push_str(&format!("user {}\n", i.username));
        for pattern in i.reads() {
            out.push_str(&format!("topic read {pattern}\n"));
        }
        out.push('\n');
    }
    out
}

/// A Mosquitto configuration using the two files, listening on `host:port`.
pub fn broker_config(host: &str, port: u16, dir: &std::path::Path) -> String {
    format!(
        "# Written by `labd mqtt-config`.\nlistener {port} {host}\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
        dir.join("passwd").display(),
        dir.join("acl").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widely published PBKDF2-HMAC-SHA512 vector (P = "password", S = "salt", c = 1).
    #[test]
    fn pbkdf2_matches_the_published_vector() {
        let out = pbkdf2_sha512(b"password", b"salt", 1);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.starts_with("867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252"), "{hex}");
    }

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = password_hash("secret").unwrap();
        let b = password_hash("secret").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$7$101$"));
        assert!(verify("secret", &a) && verify("secret", &b));
        assert!(!verify("Secret", &a));
        assert!(!verify("secret", "$6$nope"));
    }
}

//! Random bytes for secrets (tokens, passwords, salts) from the operating system's source.
//! A leaf; the one place that asks for them.

/// The operating system could not give random bytes (no secret is made from anything weaker).
#[derive(Debug, Clone, thiserror::Error)]
#[error("no randomness from the operating system for {what}: {message}")]
pub struct NoRandomness {
    pub what: &'static str,
    pub message: String,
}

/// `N` random bytes for `what` (named in the error).
pub fn random_bytes<const N: usize>(what: &'static str) -> Result<[u8; N], NoRandomness> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| NoRandomness { what, message: e.to_string() })?;
    Ok(bytes)
}

//! Deterministic ids.
//!
//! A cell's id is a hash of everything that defines it: the model file's sha256, every environment
//! parameter and the engine's version. Two sweeps that run the same model under the same settings
//! on the same engine build produce the same id, so results from different stores and different
//! days join on it; changing anything, even the ONNX Runtime patch version, gives a new id.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The parameters that identify a cell, in canonical (sorted) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellKey {
    params: BTreeMap<String, String>,
}

impl CellKey {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one parameter. Keys are unique: setting a key again replaces its value.
    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.params.insert(key.to_string(), value.to_string());
        self
    }

    /// The parameters, sorted by key.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The canonical form that is hashed: `deltann-cell-v1\n`, then one `key=value\n` line per
    /// parameter in key order, each value written as a JSON string so that no value can spell
    /// another line.
    pub fn canonical(&self) -> String {
        let mut out = String::from("deltann-cell-v1\n");
        for (k, v) in &self.params {
            out.push_str(k);
            out.push('=');
            out.push_str(&serde_json::Value::String(v.clone()).to_string());
            out.push('\n');
        }
        out
    }

    /// The id: the first 16 hex digits (64 bits) of the sha256 of [`CellKey::canonical`].
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.canonical().as_bytes())[..8])
    }
}

/// The sha256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Streams a file through sha256 without holding it in memory.
///
/// # Errors
/// Fails when the file cannot be opened or read.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_independent_of_insertion_order() {
        let mut a = CellKey::new();
        a.set("engine", "ort").set("threads", 2);
        let mut b = CellKey::new();
        b.set("threads", 2).set("engine", "ort");
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id().len(), 16);
    }

    #[test]
    fn every_parameter_changes_the_id() {
        let mut a = CellKey::new();
        a.set("engine", "ort").set("engine_version", "1.32.0");
        let mut b = a.clone();
        b.set("engine_version", "1.31.0");
        assert_ne!(a.id(), b.id());
        // A value cannot leak into the next key: "a=b" + "c" differs from "a" + "b=c".
        let mut c = CellKey::new();
        c.set("a", "b\nc=d");
        let mut d = CellKey::new();
        d.set("a", "b").set("c", "d");
        assert_ne!(c.id(), d.id());
    }

    #[test]
    fn id_is_stable_across_releases() {
        // The id is part of the store format: changing the derivation breaks joins across stores.
        let mut k = CellKey::new();
        k.set("engine", "ort").set("threads", 1);
        let expected = {
            let digest = Sha256::digest(b"deltann-cell-v1\nengine=\"ort\"\nthreads=\"1\"\n");
            hex::encode(&digest[..8])
        };
        assert_eq!(k.id(), expected);
    }
}

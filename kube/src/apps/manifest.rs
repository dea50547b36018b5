//! One published version of an app: its files by path (each a content hash) and the app's
//! own settings from `kube.app.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bundle::BundleError;

/// A file of a version: its content hash (SHA-256, hex) and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub hash: String,
    pub size: u64,
}

/// A version of an app, as stored in `apps/<name>/versions/<n>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    /// Unix seconds of the publish.
    pub published: u64,
    pub files: BTreeMap<String, FileEntry>,
    #[serde(default)]
    pub settings: AppSettings,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.files
            .values()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }
}

/// `kube.app.json` in a bundle: `{"spa": true, "headers": {"X-Frame-Options": "DENY"}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// Unknown paths get `index.html` (for client-side routing).
    #[serde(default)]
    pub spa: bool,
    /// Extra headers on every response of the app.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Headers an app may not set: they belong to the server (framing, caching, validators).
const RESERVED: &[&str] = &[
    "connection",
    "content-length",
    "content-encoding",
    "content-range",
    "content-type",
    "etag",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "vary",
    "accept-ranges",
    "strict-transport-security",
];

impl AppSettings {
    /// Parses and checks `kube.app.json`.
    pub fn parse(bytes: &[u8], has_index: bool) -> Result<AppSettings, BundleError> {
        let err = |reason: String| BundleError::AppJson { reason };
        let s: AppSettings = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        for (name, value) in &s.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(err(format!("header name {name:?} is not valid")));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(err(format!(
                    "header {name:?} has a value that is not valid"
                )));
            }
            if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(err(format!(
                    "header {name:?} is set by KUBE and cannot be overridden"
                )));
            }
        }
        if s.spa && !has_index {
            return Err(err("spa is true but the bundle has no index.html".into()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_json() {
        let ok = AppSettings::parse(
            br#"{"spa": true, "headers": {"X-Frame-Options": "DENY"}}"#,
            true,
        )
        .unwrap();
        assert!(ok.spa);
        assert!(AppSettings::parse(br#"{"spa": true}"#, false).is_err());
        assert!(AppSettings::parse(br#"{"spa": 1}"#, true).is_err());
        assert!(AppSettings::parse(br#"{"spa": true, "extra": 1}"#, true).is_err());
        assert!(AppSettings::parse(br#"{"headers": {"ETag": "x"}}"#, true).is_err());
        assert!(AppSettings::parse(br#"{"headers": {"bad name": "x"}}"#, true).is_err());
        assert!(AppSettings::parse(b"not json", true).is_err());
    }
}

//! The signed document of one channel of a download tree.
//!
//! `channels/CHANNEL.json` is a DSSE envelope (payload type
//! [`PAYLOAD_TYPE`]) signed with the same Ed25519 keys as provenance. The
//! payload lists images → versions → files, each file with its path in the
//! tree, size and sha256; the version carries the build's identity and the
//! digests of its SBOMs and provenance (they are files of the version). A
//! `serial` that only grows and an `expires` time protect against rollback
//! and freeze.

use std::collections::BTreeMap;

use kiln_attest::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::PublishError;

pub const PAYLOAD_TYPE: &str = "application/vnd.kiln.channel.v1+json";
pub const SCHEMA: &str = "kiln-channel/1";
/// Channel documents larger than this are refused unread.
pub const MAX_DOCUMENT: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Channel {
    pub schema: String,
    pub channel: String,
    pub serial: u64,
    pub generated: String,
    pub expires: String,
    pub images: BTreeMap<String, Image>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Image {
    /// Version keys sort by date as plain bytes.
    pub versions: BTreeMap<String, Version>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Version {
    /// sha256 of the build's `manifest.json`.
    pub build_id: String,
    /// The recipe's `[image] version`, if it has one.
    pub image_version: Option<String>,
    pub suite: String,
    pub architectures: Vec<String>,
    pub distroless: bool,
    /// The build's `SOURCE_DATE_EPOCH` as RFC 3339.
    pub built: String,
    pub recipe_sha256: String,
    pub packages: usize,
    pub files: Vec<File>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct File {
    /// `artifact`, `manifest`, `sbom-spdx`, `sbom-cyclonedx`, `provenance`,
    /// `test-report`.
    pub role: String,
    /// For artifacts: `tar`, `oci`, `disk`, `qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Relative to the tree's root: `pool/IMAGE/SHA256/NAME`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Channel {
    pub fn new(channel: &str) -> Channel {
        Channel {
            schema: SCHEMA.into(),
            channel: channel.into(),
            serial: 0,
            generated: String::new(),
            expires: String::new(),
            images: BTreeMap::new(),
        }
    }

    /// The envelope of this document signed with `key`.
    pub fn sign(&self, key: &SigningKey) -> String {
        let payload = serde_json::to_vec_pretty(self).expect("JSON");
        let mut s = kiln_attest::sign_envelope_as(PAYLOAD_TYPE, &payload, key);
        s.push('\n');
        s
    }

    /// Checks the envelope's signature with `key` and reads the document.
    /// `what` names it in errors (a path or URL).
    pub fn open(envelope: &[u8], key: &VerifyingKey, what: &str) -> Result<Channel, PublishError> {
        let bad = |message: String| PublishError::Tree {
            path: what.into(),
            message,
        };
        let text = std::str::from_utf8(envelope).map_err(|_| bad("is not UTF-8 text".into()))?;
        let payload = kiln_attest::verify_envelope_as(text, key, PAYLOAD_TYPE)
            .map_err(|e| bad(format!("its signature does not verify: {e}")))?;
        let doc: Channel = serde_json::from_slice(&payload).map_err(|e| {
            bad(format!(
                "the signed document is not a Kiln channel document: {e}"
            ))
        })?;
        if doc.schema != SCHEMA {
            return Err(bad(format!(
                "schema {} is not {SCHEMA} (written by a newer kiln?)",
                doc.schema
            )));
        }
        for (name, image) in &doc.images {
            for (key, v) in &image.versions {
                for f in &v.files {
                    check_path(&f.path).map_err(|m| bad(format!("{name} {key}: {m}")))?;
                    if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad(format!("{name} {key}: {} has no sha256", f.path)));
                    }
                }
            }
        }
        Ok(doc)
    }

    /// The content without serial and times: two documents with the same
    /// images are the same publication.
    pub fn same_images(&self, other: &Channel) -> bool {
        self.images == other.images && self.channel == other.channel
    }
}

/// A file path in a tree: relative, `/`-separated, no `.`, `..` or empty
/// parts, printable ASCII without `\`.
pub fn check_path(p: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_graphic() && c != '\\';
    if p.is_empty()
        || p.len() > 1024
        || p.starts_with('/')
        || !p.chars().all(ok_char)
        || p.split('/').any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "the path {p:?} is not a plain relative path inside the tree"
        ));
    }
    Ok(())
}

/// A channel name: letters, digits, `.`, `_`, `-`, starting with a letter
/// or digit.
pub fn check_channel(c: &str) -> Result<(), String> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && c.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the channel name {c:?} is not valid: use letters, digits, '.', '_' and '-' (e.g. stable, daily)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert!(check_path("pool/minbase/abc/rootfs.tar").is_ok());
        for p in [
            "",
            "/etc/passwd",
            "pool/../../x",
            "pool//x",
            "./x",
            "a\\b",
            "a b",
            "pool/./x",
        ] {
            assert!(check_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn channel_names() {
        assert!(check_channel("stable").is_ok());
        assert!(check_channel("daily-2026.12").is_ok());
        for c in ["", "../x", "a/b", ".hidden", "-x"] {
            assert!(check_channel(c).is_err(), "{c}");
        }
    }
}

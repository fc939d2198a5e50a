//! Credentials from a Docker client configuration (`config.json`), as
//! `docker login` leaves them: a credential helper for the registry
//! (`credHelpers`), else the default store (`credsStore`), else an inline
//! `auths` entry (`auth`: base64 of `user:password`).
//!
//! Helpers are programs named `docker-credential-NAME` on `PATH`, run as
//! `docker-credential-NAME get` with the registry host on stdin; they print
//! `{"Username": …, "Secret": …}`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::Value;

use crate::{Credentials, RegistryError};

/// The credentials `config.json` in `dir` has for `registry`
/// (`host[:port]`): `None` when the file, or an entry for the registry, is
/// not there; an error when the file or the helper's answer is broken.
pub fn credentials_for(dir: &Path, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let path = dir.join("config.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(config_err(&path, format!("cannot read it: {e}"))),
    };
    let v: Value =
        serde_json::from_slice(&text).map_err(|e| config_err(&path, format!("not JSON: {e}")))?;
    let helper = v
        .get("credHelpers")
        .and_then(|h| find(h, registry))
        .and_then(Value::as_str)
        .or_else(|| v.get("credsStore").and_then(Value::as_str))
        .filter(|h| !h.is_empty());
    if let Some(name) = helper {
        if let Some(c) = from_helper(&path, name, registry)? {
            return Ok(Some(c));
        }
    }
    let Some(auth) = v
        .get("auths")
        .and_then(|a| find(a, registry))
        .and_then(|e| e.get("auth"))
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| config_err(&path, format!("the auth of {registry} is not base64 text")))?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| {
        config_err(
            &path,
            format!("the auth of {registry} is not USER:PASSWORD"),
        )
    })?;
    Ok(Some(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    }))
}

/// The entry for `registry` in a map keyed by registry, also when the key
/// is written as a URL (`https://host/v1/`).
fn find<'a>(map: &'a Value, registry: &str) -> Option<&'a Value> {
    let obj = map.as_object()?;
    obj.get(registry).or_else(|| {
        obj.iter()
            .find(|(k, _)| {
                let k = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                k.split('/').next() == Some(registry)
            })
            .map(|(_, v)| v)
    })
}

fn from_helper(
    config: &Path,
    name: &str,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    // A helper name is a suffix, never a path.
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(config_err(
            config,
            format!("credential helper name {name:?} is not a plain name"),
        ));
    }
    let program = format!("docker-credential-{name}");
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Err(config_err(
                config,
                format!("names the credential helper {program}, which cannot be run: {e}"),
            ))
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| config_err(config, format!("{program} failed: {e}")))?;
    if !out.status.success() {
        // "credentials not found": the helper has nothing for this registry.
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| config_err(config, format!("{program} did not answer JSON: {e}")))?;
    match (v["Username"].as_str(), v["Secret"].as_str()) {
        (Some(u), Some(s)) if !s.is_empty() => Ok(Some(Credentials {
            username: u.to_string(),
            password: s.to_string(),
        })),
        _ => Ok(None),
    }
}

fn config_err(path: &Path, message: String) -> RegistryError {
    RegistryError::DockerConfig {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile config.json cannot make Kiln run a program by path: a
    /// helper name with a slash (or `..`) is refused before anything runs.
    #[test]
    fn a_helper_name_that_is_a_path_is_refused_and_nothing_runs() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("ran");
        // What the path would run, were it followed.
        let evil = d.path().join("docker-credential-x");
        std::fs::create_dir_all(&evil).unwrap();
        let script = evil.join("evil");
        std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in [
            "x/evil".to_string(),
            "../../../../bin/true".to_string(),
            script.display().to_string(),
        ] {
            for key in ["credHelpers", "credsStore"] {
                let config = if key == "credsStore" {
                    serde_json::json!({ "credsStore": name })
                } else {
                    serde_json::json!({ "credHelpers": { "reg.example:5000": name } })
                };
                std::fs::write(d.path().join("config.json"), config.to_string()).unwrap();
                let e = credentials_for(d.path(), "reg.example:5000").unwrap_err();
                assert!(
                    e.to_string().contains("is not a plain name"),
                    "{key} {name}: {e}"
                );
                assert!(e.to_string().contains("config.json"), "{e}");
            }
        }
        assert!(!marker.exists(), "a helper ran");
    }

    #[test]
    fn inline_auths_decode_and_bad_base64_is_named() {
        let d = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("kiln:s3cret");
        std::fs::write(
            d.path().join("config.json"),
            serde_json::json!({ "auths": { "reg.example:5000": { "auth": auth } } }).to_string(),
        )
        .unwrap();
        let c = credentials_for(d.path(), "reg.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("kiln", "s3cret")
        );
        assert!(credentials_for(d.path(), "other:1").unwrap().is_none());
        std::fs::write(
            d.path().join("config.json"),
            r#"{"auths": {"reg.example:5000": {"auth": "!!!"}}}"#,
        )
        .unwrap();
        assert!(credentials_for(d.path(), "reg.example:5000").is_err());
    }
}

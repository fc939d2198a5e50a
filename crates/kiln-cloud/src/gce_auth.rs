//! Google's credentials: an access token from the environment, or one
//! exchanged for a key file's credentials, as Google's client libraries
//! find them (Application Default Credentials):
//!
//! 1. `GOOGLE_OAUTH_ACCESS_TOKEN` or `CLOUDSDK_AUTH_ACCESS_TOKEN` (a token
//!    as `gcloud auth print-access-token` prints it), used as it is;
//! 2. the JSON file `GOOGLE_APPLICATION_CREDENTIALS` names, else gcloud's
//!    `application_default_credentials.json` (in `CLOUDSDK_CONFIG`, default
//!    `~/.config/gcloud`): a `service_account` key (a JWT signed RS256 with
//!    its private key, exchanged at its `token_uri`) or an
//!    `authorized_user` (its refresh token exchanged).
//!
//! Keys, secrets and tokens go only to the token endpoint and the APIs,
//! and are shown nowhere.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;
use ureq::http;

use crate::CloudError;

pub const SOURCES: &str = "GOOGLE_OAUTH_ACCESS_TOKEN or CLOUDSDK_AUTH_ACCESS_TOKEN (e.g. from `gcloud auth print-access-token`), else the key file GOOGLE_APPLICATION_CREDENTIALS names (a service account or authorized user), else gcloud's application_default_credentials.json (`gcloud auth application-default login`)";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

fn cred_err(message: String) -> CloudError {
    CloudError::Credentials {
        provider: "gce",
        message,
        hint: format!("credentials are read from {SOURCES}"),
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// The access token for the Cloud Storage and Compute APIs.
pub fn access_token(agent: &ureq::Agent) -> Result<String, CloudError> {
    if let Some(t) = env("GOOGLE_OAUTH_ACCESS_TOKEN").or_else(|| env("CLOUDSDK_AUTH_ACCESS_TOKEN"))
    {
        return Ok(t.trim().to_string());
    }
    let file = match env("GOOGLE_APPLICATION_CREDENTIALS") {
        Some(f) => PathBuf::from(f),
        None => {
            let dir = env("CLOUDSDK_CONFIG")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config/gcloud")));
            match dir.map(|d| d.join("application_default_credentials.json")) {
                Some(f) if f.exists() => f,
                _ => return Err(cred_err("no access token and no credentials file".into())),
            }
        }
    };
    from_file(agent, &file)
}

fn read_key_file(path: &Path) -> Result<Value, CloudError> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_string(&mut s))
        .map_err(|e| cred_err(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&s).map_err(|e| cred_err(format!("{} is not JSON: {e}", path.display())))
}

/// A token endpoint must be https (http only on loopback, for tests and
/// local emulators): a key file does not send a signed assertion anywhere.
fn token_uri(v: &Value, path: &Path) -> Result<String, CloudError> {
    let u = v["token_uri"].as_str().unwrap_or(GOOGLE_TOKEN_URI);
    let loopback = u.starts_with("http://127.0.0.1:")
        || u.starts_with("http://localhost:")
        || u.starts_with("http://[::1]:");
    if !(u.starts_with("https://") || loopback)
        || u.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(cred_err(format!(
            "{}: token_uri `{u:.80}` is not an https URL",
            path.display()
        )));
    }
    Ok(u.to_string())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A service account's RS256-signed JWT assertion for `aud`.
fn assertion(key: &Value, aud: &str, now: u64, path: &Path) -> Result<String, CloudError> {
    let email = key["client_email"]
        .as_str()
        .ok_or_else(|| cred_err(format!("{}: no client_email", path.display())))?;
    let pem = key["private_key"]
        .as_str()
        .ok_or_else(|| cred_err(format!("{}: no private_key", path.display())))?;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| cred_err(format!("{}: private_key is not a PEM key", path.display())))?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| {
        cred_err(format!(
            "{}: private_key is not an RSA PKCS#8 key ({e})",
            path.display()
        ))
    })?;
    let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(kid) = key["private_key_id"].as_str() {
        header["kid"] = kid.into();
    }
    let claims = serde_json::json!({
        "iss": email,
        "scope": SCOPE,
        "aud": aud,
        "iat": now,
        "exp": now + 3600,
    });
    let signing = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing.as_bytes(),
        &mut sig,
    )
    .map_err(|_| {
        cred_err(format!(
            "{}: signing with private_key failed",
            path.display()
        ))
    })?;
    Ok(format!("{signing}.{}", b64(&sig)))
}

fn from_file(agent: &ureq::Agent, path: &Path) -> Result<String, CloudError> {
    let key = read_key_file(path)?;
    let uri = token_uri(&key, path)?;
    let body = match key["type"].as_str() {
        Some("service_account") => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let jwt = assertion(&key, &uri, now, path)?;
            crate::form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &jwt),
            ])
        }
        Some("authorized_user") => {
            let get = |k: &str| {
                key[k]
                    .as_str()
                    .ok_or_else(|| cred_err(format!("{}: no {k}", path.display())))
            };
            crate::form(&[
                ("grant_type", "refresh_token"),
                ("client_id", get("client_id")?),
                ("client_secret", get("client_secret")?),
                ("refresh_token", get("refresh_token")?),
            ])
        }
        other => {
            return Err(cred_err(format!(
                "{}: credentials of type {} (Kiln reads service_account and authorized_user)",
                path.display(),
                other.unwrap_or("none")
            )))
        }
    };
    let req = http::Request::builder()
        .method("POST")
        .uri(&uri)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.into_bytes())
        .map_err(|e| cred_err(format!("bad token request: {e}")))?;
    let mut resp = agent.run(req).map_err(|e| CloudError::Transport {
        service: "oauth2",
        action: "token".into(),
        region: "global".into(),
        message: format!("cannot reach {uri}: {e}"),
    })?;
    let status = resp.status().as_u16();
    let v: Value = serde_json::from_slice(
        &resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .unwrap_or_default(),
    )
    .unwrap_or(Value::Null);
    if status != 200 {
        return Err(CloudError::Credentials {
            provider: "gce",
            message: format!(
                "{uri} refused the credentials of {} (HTTP {status}: {})",
                path.display(),
                v["error"].as_str().unwrap_or("no error given")
            ),
            hint: format!(
                "check the key file, or create a new key (credentials are read from {SOURCES})"
            ),
        });
    }
    v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty() && t.len() < 8192 && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .ok_or_else(|| CloudError::Transport {
            service: "oauth2",
            action: "token".into(),
            region: "global".into(),
            message: "the answer has no access_token".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_checked_before_anything_is_sent() {
        let p = Path::new("key.json");
        let e = token_uri(
            &serde_json::json!({"token_uri": "http://evil.example/token"}),
            p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an https URL"), "{e}");
        assert_eq!(
            token_uri(&serde_json::json!({}), p).unwrap(),
            GOOGLE_TOKEN_URI
        );
        let e = assertion(
            &serde_json::json!({"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
            GOOGLE_TOKEN_URI,
            0,
            p,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an RSA PKCS#8 key"), "{e}");
        assert!(!e.to_string().contains("AAAA"));
    }
}

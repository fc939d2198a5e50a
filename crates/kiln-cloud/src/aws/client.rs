//! Signed requests to AWS: credentials from the standard places, the
//! endpoint from the standard overrides, SigV4 by AWS's own `aws-sigv4`,
//! retries of what failed in a passing way.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as SdkCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use ureq::http;

use crate::CloudError;

/// Replies are read up to this size (the largest, DescribeImages of one
/// name or tag, is a few KiB).
const MAX_REPLY: u64 = 4 << 20;
const ATTEMPTS: u32 = 4;

/// Where the credentials came from (never the secret itself).
#[derive(Clone)]
pub struct Credentials {
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where credentials are looked for, for the error that finds none.
pub const CREDENTIAL_SOURCES: &str = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), else the profile AWS_PROFILE (default `default`) of AWS_SHARED_CREDENTIALS_FILE (default ~/.aws/credentials)";

impl Credentials {
    /// The standard chain: the environment, then the shared credentials
    /// file's profile.
    pub fn from_env() -> Result<Credentials, CloudError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let none = |message: String| CloudError::Credentials {
            provider: "aws",
            message,
            hint: format!("credentials are read from {CREDENTIAL_SOURCES}"),
        };
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(a), Some(s)) => {
                return Ok(Credentials {
                    access_key: a,
                    secret_key: s,
                    session_token: env("AWS_SESSION_TOKEN"),
                    source: "the environment (AWS_ACCESS_KEY_ID)".into(),
                })
            }
            (Some(_), None) => {
                return Err(none(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(none(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
                ))
            }
            (None, None) => {}
        }
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let Some(file) = file else {
            return Err(none("no credentials found".into()));
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(none(format!(
                    "no credentials found (no AWS_ACCESS_KEY_ID, and {} does not exist)",
                    file.display()
                )))
            }
            Err(e) => return Err(none(format!("cannot read {}: {e}", file.display()))),
        };
        let keys = profile_keys(&text, &profile);
        let get = |k: &str| {
            keys.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(a), Some(s)) => Ok(Credentials {
                access_key: a,
                secret_key: s,
                session_token: get("aws_session_token"),
                source: format!("profile `{profile}` of {}", file.display()),
            }),
            _ => Err(none(format!(
                "{} has no aws_access_key_id and aws_secret_access_key in profile `{profile}`",
                file.display()
            ))),
        }
    }
}

/// The `key = value` lines of `[profile]` in an INI credentials file.
fn profile_keys(text: &str, profile: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    out
}

/// A reply: status, the headers the callers read, the body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Calls to one service of AWS in any region.
pub struct Client {
    agent: ureq::Agent,
    credentials: Credentials,
}

impl Client {
    pub fn new(credentials: Credentials) -> Client {
        Client {
            agent: crate::agent(),
            credentials,
        }
    }

    /// The endpoint of `service` in `region`: `AWS_ENDPOINT_URL_<SERVICE>`,
    /// else `AWS_ENDPOINT_URL`, else AWS's own.
    pub fn endpoint(service: &str, region: &str) -> String {
        let own = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
        std::env::var(&own)
            .ok()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|v| !v.is_empty())
            .map(|v| v.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"))
    }

    /// A signed request, retried when it failed in a passing way
    /// (connection trouble, HTTP 5xx, throttling). `action` names it in
    /// errors.
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &self,
        service: &'static str,
        region: &str,
        action: &str,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Reply, CloudError> {
        let url = format!("{}{path_and_query}", Client::endpoint(service, region));
        let transport = |message: String| CloudError::Transport {
            service,
            action: action.to_string(),
            region: region.to_string(),
            message,
        };
        let mut wait = Duration::from_millis(300);
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            let signed = self.sign(service, region, method, &url, headers, body)?;
            let mut req = http::Request::builder().method(method).uri(&url);
            for (k, v) in headers.iter().map(|(k, v)| (*k, v.as_str())) {
                req = req.header(k, v);
            }
            for (k, v) in &signed {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req
                .header("Content-Length", body.len())
                .body(body)
                .map_err(|e| transport(format!("bad request: {e}")))?;
            match self.agent.run(req) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let body = resp
                        .body_mut()
                        .with_config()
                        .limit(MAX_REPLY)
                        .read_to_vec()
                        .map_err(|e| transport(format!("reading the answer: {e}")))?;
                    let head = String::from_utf8_lossy(&body[..body.len().min(2048)]);
                    let throttled = status == 429
                        || status == 503
                        || [
                            "RequestLimitExceeded",
                            "ThrottlingException",
                            "RequestThrottledException",
                            "Throttling",
                        ]
                        .iter()
                        .any(|c| head.contains(c));
                    if (status >= 500 || throttled) && attempt < ATTEMPTS {
                        last = Some(Reply { status, body });
                    } else {
                        return Ok(Reply { status, body });
                    }
                }
                Err(e) => {
                    let m = e.to_string();
                    if attempt == ATTEMPTS {
                        return Err(transport(format!("cannot reach {url}: {m}")));
                    }
                }
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
        Ok(last.expect("the last attempt returns"))
    }

    /// The headers SigV4 adds (`x-amz-date`, `authorization`, the session
    /// token).
    fn sign(
        &self,
        service: &str,
        region: &str,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, CloudError> {
        let c = &self.credentials;
        let identity = SdkCredentials::new(
            &c.access_key,
            &c.secret_key,
            c.session_token.clone(),
            None,
            "kiln",
        )
        .into();
        let fail = |m: String| CloudError::Credentials {
            provider: "aws",
            message: format!("cannot sign the request: {m}"),
            hint: format!("credentials are read from {CREDENTIAL_SOURCES}"),
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fail(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| fail(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| fail(e.to_string()))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_an_ini_file() {
        let text = "# c\n[default]\naws_access_key_id = A\naws_secret_access_key=S\n\n[profile ci]\nAWS_ACCESS_KEY_ID = B\n";
        assert_eq!(
            profile_keys(text, "default"),
            [
                ("aws_access_key_id".to_string(), "A".to_string()),
                ("aws_secret_access_key".into(), "S".into())
            ]
        );
        assert_eq!(profile_keys(text, "ci")[0].1, "B");
        assert!(profile_keys(text, "none").is_empty());
    }

    #[test]
    fn the_debug_form_of_credentials_holds_no_secret() {
        let c = Credentials {
            access_key: "AKIAEXAMPLEKEY".into(),
            secret_key: "very-secret".into(),
            session_token: Some("tok".into()),
            source: "test".into(),
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("very-secret") && !d.contains("AKIAEXAMPLEKEY") && !d.contains("tok\""),
            "{d}"
        );
    }
}

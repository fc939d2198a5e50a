//! `azure://CONTAINER?resource-group=RG&location=LOC`: after the page
//! blob, the managed image record (`Microsoft.Compute/images`) made from
//! it through Azure Resource Manager, which is what a VM is created from.
//!
//! - The subscription is `AZURE_SUBSCRIPTION_ID`; the service principal
//!   comes from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//!   `AZURE_CLIENT_SECRET` (the Azure SDKs' environment credential): a
//!   token for Resource Manager is asked of `AZURE_AUTHORITY_HOST` (default
//!   Microsoft Entra ID's) with the client-credentials grant. The secret
//!   goes only there, the token only to Resource Manager.
//! - Resource Manager is `AZURE_RESOURCE_MANAGER_ENDPOINT` when set (a
//!   sovereign cloud, or the tests' recorder), else the public cloud's.
//! - An image of the name tagged `kiln_sha256` with this VHD's digest and
//!   made from this blob is reused; one being made is waited for; a failed
//!   one of this disk is deleted and made anew; one of another disk is
//!   refused unless `replace` (then deleted first). The new image is a
//!   Hyper-V generation 2 (UEFI) Linux image, generalized, from the blob,
//!   and is waited for until `Succeeded` before anything is recorded.

use std::time::Duration;

use serde_json::{json, Value};
use ureq::http;

use crate::CloudError;

const API_VERSION: &str = "2024-03-01";
const PUBLIC_ARM: &str = "https://management.azure.com";
const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const CREDENTIAL_SOURCES: &str = "AZURE_SUBSCRIPTION_ID, and a service principal in AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET";

/// Resource group names: 1–90 letters, digits, `-`, `_`, `.`, `(`, `)`,
/// not ending in `.`.
pub fn valid_resource_group(s: &str) -> bool {
    (1..=90).contains(&s.len())
        && !s.ends_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.()".contains(&b))
}

/// Region names as Resource Manager writes them (`westeurope`).
pub fn valid_location(s: &str) -> bool {
    (2..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// An image name from a blob name: at most 80 letters, digits, `-`, `_`,
/// `.`, ending in a letter, digit or `_`.
pub fn image_name(blob: &str) -> String {
    let base = blob.strip_suffix(".vhd").unwrap_or(blob);
    let mut n: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect();
    while n.ends_with(['-', '.']) {
        n.pop();
    }
    n
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    pub resource_group: String,
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReport {
    /// `/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/NAME`.
    pub id: String,
    /// `created` or `reused`.
    pub how: &'static str,
}

fn cred_err(message: String) -> CloudError {
    CloudError::Credentials {
        provider: "azure",
        message,
        hint: format!("the image record needs {CREDENTIAL_SOURCES}"),
    }
}

struct Arm {
    agent: ureq::Agent,
    endpoint: String,
    token: String,
    region: String,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

fn base_url(var: &str, default: &str) -> Result<String, CloudError> {
    let u = env(var).unwrap_or_else(|| default.to_string());
    if !(u.starts_with("https://") || u.starts_with("http://")) {
        return Err(cred_err(format!("{var} `{u:.80}` is not an http(s) URL")));
    }
    Ok(u.trim_end_matches('/').to_string())
}

fn transport(action: &str, region: &str, message: String) -> CloudError {
    CloudError::Transport {
        service: "arm",
        action: action.to_string(),
        region: region.to_string(),
        message,
    }
}

fn send(
    agent: &ureq::Agent,
    action: &str,
    region: &str,
    req: http::request::Builder,
    body: Vec<u8>,
) -> Result<(u16, Value), CloudError> {
    let url = req.uri_ref().map(|u| u.to_string()).unwrap_or_default();
    let req = req
        .body(body)
        .map_err(|e| transport(action, region, format!("bad request: {e}")))?;
    let mut resp = agent.run(req).map_err(|e| {
        transport(
            action,
            region,
            format!("cannot reach {}: {e}", url.split('?').next().unwrap_or("")),
        )
    })?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .unwrap_or_default();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

impl Arm {
    fn login(region: &str) -> Result<(Arm, String), CloudError> {
        let Some(sub) = env("AZURE_SUBSCRIPTION_ID") else {
            return Err(cred_err("no AZURE_SUBSCRIPTION_ID".into()));
        };
        if !sub.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') || sub.len() > 64 {
            return Err(cred_err(format!(
                "AZURE_SUBSCRIPTION_ID `{sub:.64}` is not a subscription id"
            )));
        }
        let (Some(tenant), Some(client), Some(secret)) = (
            env("AZURE_TENANT_ID"),
            env("AZURE_CLIENT_ID"),
            env("AZURE_CLIENT_SECRET"),
        ) else {
            return Err(cred_err(
                "no service principal (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)"
                    .into(),
            ));
        };
        if !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        {
            return Err(cred_err(format!(
                "AZURE_TENANT_ID `{tenant:.64}` is not a tenant id or domain"
            )));
        }
        let endpoint = base_url("AZURE_RESOURCE_MANAGER_ENDPOINT", PUBLIC_ARM)?;
        let authority = base_url("AZURE_AUTHORITY_HOST", PUBLIC_AUTHORITY)?;
        let agent = crate::agent();
        let scope = format!("{PUBLIC_ARM}/.default");
        let body = crate::form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client),
            ("client_secret", &secret),
            ("scope", &scope),
        ]);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("{authority}/{tenant}/oauth2/v2.0/token"))
            .header("Content-Type", "application/x-www-form-urlencoded");
        let (status, v) = send(&agent, "token", region, req, body.into_bytes())?;
        if status != 200 {
            return Err(CloudError::Credentials {
                provider: "azure",
                message: format!(
                    "{authority} refused the service principal {client} of tenant {tenant} (HTTP {status}: {})",
                    v["error"].as_str().unwrap_or("no error given")
                ),
                hint: format!(
                    "check AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (the image record needs {CREDENTIAL_SOURCES})"
                ),
            });
        }
        let Some(token) = v["access_token"].as_str().filter(|t| {
            !t.is_empty() && t.len() < 16384 && t.bytes().all(|b| b.is_ascii_graphic())
        }) else {
            return Err(transport(
                "token",
                region,
                "the answer has no access_token".into(),
            ));
        };
        Ok((
            Arm {
                agent,
                endpoint,
                token: token.to_string(),
                region: region.to_string(),
            },
            sub,
        ))
    }

    fn call(
        &self,
        action: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CloudError> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}?api-version={API_VERSION}", self.endpoint))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json");
        send(
            &self.agent,
            action,
            &self.region,
            req,
            body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        )
    }

    fn api(&self, action: &str, status: u16, v: &Value) -> CloudError {
        CloudError::Api {
            service: "arm",
            action: action.to_string(),
            region: self.region.clone(),
            status,
            code: v["error"]["code"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP{status}")),
            message: v["error"]["message"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// Makes (or reuses) the image `name` from the page blob `blob_url`.
#[allow(clippy::too_many_arguments)]
pub fn publish(
    rec: &ImageRecord,
    name: &str,
    blob_url: &str,
    sha256: &str,
    tags: &[(String, String)],
    replace: bool,
    wait: Duration,
    progress: &dyn Fn(&str),
) -> Result<ImageReport, CloudError> {
    let (arm, sub) = Arm::login(&rec.location)?;
    let id = format!(
        "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Compute/images/{name}",
        rec.resource_group
    );
    let target = format!("azure image {name}");
    let (status, v) = arm.call("images.get", "GET", &id, None)?;
    match status {
        200 => {
            let mine = v["tags"]["kiln_sha256"] == sha256
                && v["properties"]["storageProfile"]["osDisk"]["blobUri"] == blob_url;
            let state = v["properties"]["provisioningState"].as_str().unwrap_or("");
            if mine && state != "Failed" {
                wait_succeeded(&arm, &id, wait)?;
                progress(&format!("image {name} has this disk already"));
                return Ok(ImageReport { id, how: "reused" });
            }
            if !mine && !replace {
                return Err(CloudError::Target {
                    target,
                    message: format!(
                        "the image name `{name}` is already used in resource group {} by another disk (kiln_sha256 {}), not this one ({sha256})",
                        rec.resource_group,
                        v["tags"]["kiln_sha256"].as_str().unwrap_or("none")
                    ),
                    hint: Some("publish with --replace to delete it and make this disk's image under the name".into()),
                });
            }
            progress(&format!(
                "deleting image {name} ({})",
                if mine { "it failed" } else { "--replace" }
            ));
            let (s, v) = arm.call("images.delete", "DELETE", &id, None)?;
            if s >= 300 && s != 404 {
                return Err(arm.api("images.delete", s, &v));
            }
            crate::wait_for(
                wait,
                || Ok(arm.call("images.get", "GET", &id, None)?.0 == 404),
                &format!("image {name} to be deleted"),
            )?;
        }
        404 if v["error"]["code"] == "ResourceGroupNotFound" => {
            return Err(CloudError::Target {
                target,
                message: format!(
                    "the subscription has no resource group `{}`",
                    rec.resource_group
                ),
                hint: Some(
                    "create it (az group create) or name another with ?resource-group=".into(),
                ),
            })
        }
        404 => {}
        s => return Err(arm.api("images.get", s, &v)),
    }
    let mut t = serde_json::Map::new();
    t.insert("kiln_sha256".into(), sha256.into());
    for (k, v) in tags {
        t.insert(k.clone(), v.clone().into());
    }
    let body = json!({
        "location": rec.location,
        "tags": t,
        "properties": {
            "hyperVGeneration": "V2",
            "storageProfile": {
                "osDisk": {
                    "osType": "Linux",
                    "osState": "Generalized",
                    "blobUri": blob_url,
                    "storageAccountType": "Standard_LRS",
                    "caching": "ReadWrite",
                }
            }
        }
    });
    let (s, v) = arm.call("images.createOrUpdate", "PUT", &id, Some(&body))?;
    if s != 200 && s != 201 {
        let e = arm.api("images.createOrUpdate", s, &v);
        if let CloudError::Api { code, .. } = &e {
            if code == "LocationNotAvailableForResourceType"
                || code == "NoRegisteredProviderFound"
                || code == "InvalidLocation"
            {
                return Err(CloudError::Target {
                    target,
                    message: format!("`{}` is not a region images can be made in: {e}", rec.location),
                    hint: Some("name a region of the subscription with ?location= (az account list-locations)".into()),
                });
            }
        }
        return Err(e);
    }
    progress(&format!("image {name}: waiting for it to be made"));
    wait_succeeded(&arm, &id, wait)?;
    Ok(ImageReport { id, how: "created" })
}

fn wait_succeeded(arm: &Arm, id: &str, wait: Duration) -> Result<(), CloudError> {
    crate::wait_for(
        wait,
        || {
            let (s, v) = arm.call("images.get", "GET", id, None)?;
            if s != 200 {
                return Err(arm.api("images.get", s, &v));
            }
            match v["properties"]["provisioningState"].as_str().unwrap_or("") {
                "Succeeded" => Ok(true),
                "Failed" | "Canceled" => Err(CloudError::Target {
                    target: id.to_string(),
                    message: "the image failed to be made".into(),
                    hint: Some(
                        "publish again: a failed image of this disk is deleted and made anew"
                            .into(),
                    ),
                }),
                _ => Ok(false),
            }
        },
        id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_places_are_checked() {
        assert_eq!(
            image_name("debian-cloud-13-amd64-20261207-120000.vhd"),
            "debian-cloud-13-amd64-20261207-120000"
        );
        assert_eq!(image_name("a b/c.vhd"), "a-b-c");
        assert!(image_name(&"x".repeat(200)).len() <= 80);
        assert!(
            valid_resource_group("rg-images_1(prod)")
                && !valid_resource_group("rg.")
                && !valid_resource_group("a/b")
        );
        assert!(
            valid_location("westeurope") && !valid_location("West Europe") && !valid_location("x")
        );
        assert_eq!(crate::form(&[("a", "b c&d")]), "a=b%20c%26d");
    }
}

//! The EBS direct APIs: a snapshot written block by block, no S3 bucket
//! and no import role.

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::client::Client;
use crate::CloudError;

/// EBS's block size.
pub const BLOCK: usize = 512 * 1024;

fn api_error(region: &str, action: &str, status: u16, body: &[u8]) -> CloudError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    CloudError::Api {
        service: "ebs",
        action: action.to_string(),
        region: region.to_string(),
        status,
        code: text("__type")
            .or_else(|| text("Code"))
            .or_else(|| text("code"))
            .unwrap_or_else(|| format!("HTTP{status}")),
        message: text("Message")
            .or_else(|| text("message"))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()),
    }
}

/// StartSnapshot of `gib` GiB, tagged; its id.
pub fn start(
    c: &Client,
    region: &str,
    gib: u64,
    description: &str,
    tags: &[(String, String)],
    client_token: &str,
) -> Result<String, CloudError> {
    let body = json!({
        "VolumeSize": gib,
        "Description": description,
        "ClientToken": client_token,
        "Timeout": 60,
        "Tags": tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    })
    .to_string();
    let r = c.call(
        "ebs",
        region,
        "StartSnapshot",
        "POST",
        "/snapshots",
        &[("content-type", "application/json".into())],
        body.as_bytes(),
    )?;
    if r.status >= 300 {
        return Err(api_error(region, "StartSnapshot", r.status, &r.body));
    }
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    v.get("SnapshotId")
        .and_then(Value::as_str)
        .filter(|id| {
            id.starts_with("snap-")
                && id.len() < 64
                && id[5..].bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(str::to_string)
        .ok_or_else(|| CloudError::Transport {
            service: "ebs",
            action: "StartSnapshot".into(),
            region: region.into(),
            message: "the answer has no snapshot id".into(),
        })
}

/// PutSnapshotBlock: one 512 KiB block with its sha256.
pub fn put_block(
    c: &Client,
    region: &str,
    snapshot: &str,
    index: u64,
    data: &[u8],
) -> Result<(), CloudError> {
    let sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data));
    let r = c.call(
        "ebs",
        region,
        "PutSnapshotBlock",
        "PUT",
        &format!("/snapshots/{snapshot}/blocks/{index}"),
        &[
            ("content-type", "application/octet-stream".into()),
            ("x-amz-data-length", data.len().to_string()),
            ("x-amz-checksum", sum),
            ("x-amz-checksum-algorithm", "SHA256".into()),
        ],
        data,
    )?;
    if r.status >= 300 {
        return Err(api_error(region, "PutSnapshotBlock", r.status, &r.body));
    }
    Ok(())
}

/// CompleteSnapshot with the number of blocks written.
pub fn complete(c: &Client, region: &str, snapshot: &str, changed: u64) -> Result<(), CloudError> {
    let r = c.call(
        "ebs",
        region,
        "CompleteSnapshot",
        "POST",
        &format!("/snapshots/completion/{snapshot}"),
        &[("x-amz-changedblockscount", changed.to_string())],
        b"",
    )?;
    if r.status >= 300 {
        return Err(api_error(region, "CompleteSnapshot", r.status, &r.body));
    }
    Ok(())
}

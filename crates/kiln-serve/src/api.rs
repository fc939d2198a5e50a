//! The JSON the finder serves and exports, and how a query string becomes a
//! catalog [`Query`].

use kiln_catalog::{Found, PackageQuery, Query};
use serde_json::{json, Map, Value};

/// The version of the finder's JSON documents (`"schema-version"`).
pub const SCHEMA_VERSION: u32 = 1;

/// The query parameters `/api/v1/images` takes.
pub(crate) const PARAMETERS: [&str; 9] = [
    "suite", "arch", "format", "package", "channel", "provider", "region", "latest", "limit",
];

/// The most versions one answer lists when `limit` is given larger.
pub(crate) const MAX_LIMIT: usize = 10_000;

/// A search: the catalog query, and how many of its results to send.
#[derive(Debug, Default)]
pub(crate) struct Search {
    pub query: Query,
    /// At most this many versions (newest first); all when `None`.
    pub limit: Option<usize>,
}

/// A request the API refuses, with the HTTP status to say it with.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    pub parameter: Option<String>,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            parameter: None,
            hint: None,
        }
    }

    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("schema-version".into(), SCHEMA_VERSION.into());
        m.insert("error".into(), self.message.clone().into());
        if let Some(p) = &self.parameter {
            m.insert("parameter".into(), p.clone().into());
        }
        if let Some(h) = &self.hint {
            m.insert("hint".into(), h.clone().into());
        }
        Value::Object(m)
    }
}

impl From<kiln_catalog::CatalogError> for ApiError {
    fn from(e: kiln_catalog::CatalogError) -> ApiError {
        ApiError {
            status: 500,
            message: e.to_string(),
            parameter: None,
            hint: e.hint(),
        }
    }
}

/// The catalog query for `/api/v1/images?…` (already percent-decoded pairs).
/// Empty values mean "any"; unknown or repeated parameters are refused so
/// a typo does not silently widen the search.
pub(crate) fn query(pairs: &[(String, String)]) -> Result<Search, ApiError> {
    let mut q = Query::default();
    let mut limit = None;
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in pairs {
        let bad = |message: String| ApiError {
            status: 400,
            message,
            parameter: Some(k.clone()),
            hint: None,
        };
        let Some(known) = PARAMETERS.iter().find(|p| **p == k) else {
            let mut e = bad(format!("unknown query parameter `{k}`"));
            e.hint = Some(format!("the parameters are {}", PARAMETERS.join(", ")));
            return Err(e);
        };
        if seen.contains(known) {
            return Err(bad(format!("query parameter `{k}` given twice")));
        }
        seen.push(known);
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        match *known {
            "suite" => q.suite = Some(v.to_string()),
            "arch" => q.architecture = Some(v.to_string()),
            "format" => q.format = Some(v.to_string()),
            "channel" => q.channel = Some(v.to_string()),
            "provider" => q.provider = Some(v.to_string()),
            "region" => q.region = Some(v.to_string()),
            "limit" => {
                limit = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            bad(format!("`limit={v}`: give a number from 1 to {MAX_LIMIT}"))
                        })?,
                )
            }
            "package" => {
                q.package = Some(PackageQuery::parse(v).map_err(|e| {
                    let mut b = bad(e.to_string());
                    b.hint = Some(
                        "e.g. package=openssl or package=openssl%3C%3C3.5.4-1 (openssl<<3.5.4-1)"
                            .into(),
                    );
                    b
                })?)
            }
            "latest" => {
                q.latest = match v {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    _ => return Err(bad(format!("`latest={v}`: give latest=1 or latest=0"))),
                }
            }
            _ => unreachable!("every parameter is handled"),
        }
    }
    Ok(Search { query: q, limit })
}

/// One image version as the finder publishes it: the catalog's entry plus
/// its `status` as `kiln watch` last found it (null: never checked):
/// `{state, summary, updates, security, cves, checked-at}`.
pub(crate) fn entry(f: &Found) -> Value {
    let mut v = serde_json::to_value(f).expect("catalog entries serialise");
    if let Value::Object(m) = &mut v {
        m.insert("status".into(), status(f));
    }
    v
}

fn status(f: &Found) -> Value {
    let Some(w) = &f.watch else {
        return Value::Null;
    };
    let cves = if w.cves.is_empty() {
        String::new()
    } else {
        format!(" ({})", w.cves.join(", "))
    };
    let summary = match w.status.as_str() {
        "up-to-date" => "up to date".to_string(),
        "updates" => format!("{} update(s) available", w.updates),
        "security" => format!("security updates pending: {} package(s){cves}", w.security),
        _ => "could not be checked".to_string(),
    };
    json!({
        "state": w.status,
        "summary": summary,
        "updates": w.updates,
        "security": w.security,
        "cves": w.cves,
        "checked-at": w.checked_at,
    })
}

/// `GET /api/v1/images` and `api/v1/images.json`: the first `limit` of
/// the versions found, and how many were found.
pub(crate) fn images_document(found: &[Found], limit: Option<usize>) -> Value {
    let shown = &found[..limit.unwrap_or(usize::MAX).min(found.len())];
    json!({
        "schema-version": SCHEMA_VERSION,
        "total": found.len(),
        "images": shown.iter().map(entry).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/facets` and `api/v1/facets.json`: what there is to search
/// by, without listing every version.
pub(crate) fn facets_document(f: &kiln_catalog::Facets) -> Value {
    let mut v = serde_json::to_value(f).expect("facets serialise");
    if let Value::Object(m) = &mut v {
        m.insert("schema-version".into(), SCHEMA_VERSION.into());
    }
    v
}

/// `GET /api/v1/images/NAME` and `api/v1/images/NAME.json`: its versions,
/// newest first.
pub(crate) fn image_document(name: &str, versions: &[&Found]) -> Value {
    json!({
        "schema-version": SCHEMA_VERSION,
        "image": name,
        "versions": versions.iter().map(|f| entry(f)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_query_string_becomes_a_catalog_query() {
        let q = query(&pairs(&[
            ("suite", "trixie"),
            ("arch", "arm64"),
            ("format", ""),
            ("package", "openssl<<3.5.4-1"),
            ("channel", "stable"),
            ("provider", "aws"),
            ("region", "eu-west-1"),
            ("latest", "1"),
            ("limit", "100"),
        ]))
        .unwrap();
        assert_eq!(q.limit, Some(100));
        let q = q.query;
        assert_eq!(q.channel.as_deref(), Some("stable"));
        assert_eq!(q.provider.as_deref(), Some("aws"));
        assert_eq!(q.region.as_deref(), Some("eu-west-1"));
        assert_eq!(q.suite.as_deref(), Some("trixie"));
        assert_eq!(q.architecture.as_deref(), Some("arm64"));
        assert_eq!(q.format, None, "an empty value is no filter");
        let p = q.package.unwrap();
        assert_eq!(p.name, "openssl");
        assert!(p.matches("3.5.1-1") && !p.matches("3.5.10-1"));
        assert!(q.latest);
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = query(&pairs(&[("package", "openssl<3")])).unwrap_err();
        assert_eq!((e.status, e.parameter.as_deref()), (400, Some("package")));
        assert!(e.message.contains("openssl<3"), "{}", e.message);
        let e = query(&pairs(&[("architecture", "amd64")])).unwrap_err();
        assert!(e.message.contains("`architecture`"), "{}", e.message);
        assert!(e.hint.unwrap().contains("arch"));
        let e = query(&pairs(&[("suite", "a"), ("suite", "b")])).unwrap_err();
        assert!(e.message.contains("twice"), "{}", e.message);
        let e = query(&pairs(&[("latest", "maybe")])).unwrap_err();
        assert_eq!(e.parameter.as_deref(), Some("latest"));
        for bad in ["0", "-1", "x", "10001"] {
            let e = query(&pairs(&[("limit", bad)])).unwrap_err();
            assert_eq!(e.parameter.as_deref(), Some("limit"), "{bad}");
        }
    }
}

//! SLSA v1 build provenance as an in-toto Statement v1.
//!
//! ```json
//! {"_type": "https://in-toto.io/Statement/v1",
//!  "subject": [{"name": "image.raw", "digest": {"sha256": "…"}}],
//!  "predicateType": "https://slsa.dev/provenance/v1",
//!  "predicate": {
//!    "buildDefinition": {"buildType": "…", "externalParameters": {…},
//!                        "resolvedDependencies": [{"uri": "…", "digest": {"sha256": "…"}, "name": "…"}]},
//!    "runDetails": {"builder": {"id": "…", "version": {"kiln": "0.1.0"}},
//!                   "metadata": {"startedOn": "…Z", "finishedOn": "…Z"}}}}
//! ```

use serde_json::{json, Map, Value};

use crate::error::AttestError;
use crate::util::{canonical_json, rfc3339};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA build provenance v1.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";

/// An artifact the build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// File name of the artifact, e.g. `debian-trixie.img`.
    pub name: String,
    /// Lower-case hex sha256 of its content.
    pub sha256: String,
}

/// Something the build consumed: a `.deb`, the lock file, a Release file…
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDependency {
    /// Where it came from, e.g. the `.deb`'s URL or a purl.
    pub uri: String,
    /// Lower-case hex sha256 of its content.
    pub sha256: String,
    pub name: Option<String>,
}

/// What the provenance says about one build.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvenanceInput {
    pub subjects: Vec<Subject>,
    pub dependencies: Vec<ResolvedDependency>,
    /// URI naming the kind of build (how to read `external_parameters`).
    pub build_type: String,
    /// URI naming the builder (the trust boundary that ran the build).
    pub builder_id: String,
    /// Recorded as `runDetails.builder.version.kiln`.
    pub kiln_version: String,
    /// The inputs the user controlled (recipe, lock file digest, options);
    /// SLSA expects a JSON object.
    pub external_parameters: Value,
    /// Seconds since the epoch.
    pub started: i64,
    pub finished: i64,
}

/// The in-toto Statement as canonical JSON (sorted keys, no whitespace), the
/// bytes to sign with [`crate::sign_envelope`].
pub fn statement(input: &ProvenanceInput) -> Vec<u8> {
    let subject: Vec<Value> = input
        .subjects
        .iter()
        .map(|s| json!({"name": s.name, "digest": {"sha256": s.sha256}}))
        .collect();
    let resolved: Vec<Value> = input
        .dependencies
        .iter()
        .map(|d| {
            let mut m = Map::new();
            m.insert("uri".into(), json!(d.uri));
            m.insert("digest".into(), json!({"sha256": d.sha256}));
            if let Some(name) = &d.name {
                m.insert("name".into(), json!(name));
            }
            Value::Object(m)
        })
        .collect();
    let value = json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": input.build_type,
                "externalParameters": input.external_parameters,
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {
                    "id": input.builder_id,
                    "version": {"kiln": input.kiln_version},
                },
                "metadata": {
                    "startedOn": rfc3339(input.started),
                    "finishedOn": rfc3339(input.finished),
                },
            },
        },
    });
    canonical_json(&value)
}

/// Reads back the subjects and resolved dependencies of a statement made by
/// [`statement`] (after [`crate::verify_envelope`] has checked it).
///
/// Fails unless the payload is an in-toto Statement v1 with a SLSA
/// provenance v1 predicate whose subjects and dependencies all carry a sha256
/// digest.
pub fn parse_statement(
    payload: &[u8],
) -> Result<(Vec<Subject>, Vec<ResolvedDependency>), AttestError> {
    let bad = |detail: String| AttestError::Statement { detail };
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let str_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let kind = str_at(&value, "_type").unwrap_or_default();
    if kind != STATEMENT_TYPE {
        return Err(bad(format!("_type is '{kind}', not '{STATEMENT_TYPE}'")));
    }
    let predicate_type = str_at(&value, "predicateType").unwrap_or_default();
    if predicate_type != SLSA_PROVENANCE_V1 {
        return Err(bad(format!(
            "predicateType is '{predicate_type}', not '{SLSA_PROVENANCE_V1}'"
        )));
    }
    let sha256 = |v: &Value, what: &str| {
        v.get("digest")
            .and_then(|d| d.get("sha256"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad(format!("{what} has no sha256 digest")))
    };

    let subjects = value
        .get("subject")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no subject".into()))?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(Subject {
                name: str_at(s, "name").unwrap_or_default(),
                sha256: sha256(s, &format!("subject[{i}]"))?,
            })
        })
        .collect::<Result<Vec<_>, AttestError>>()?;

    let build_definition = value
        .get("predicate")
        .and_then(|p| p.get("buildDefinition"))
        .ok_or_else(|| bad("the predicate has no buildDefinition".into()))?;
    let dependencies = match build_definition.get("resolvedDependencies") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let what = format!("resolvedDependencies[{i}]");
                Ok(ResolvedDependency {
                    uri: str_at(d, "uri").ok_or_else(|| bad(format!("{what} has no uri")))?,
                    sha256: sha256(d, &what)?,
                    name: str_at(d, "name"),
                })
            })
            .collect::<Result<Vec<_>, AttestError>>()?,
        Some(_) => return Err(bad("resolvedDependencies is not a list".into())),
    };
    Ok((subjects, dependencies))
}

//! Software bills of materials for an image: SPDX 2.3 JSON and CycloneDX 1.5
//! JSON.
//!
//! Both documents describe the same graph: the image is the root element and
//! contains every Debian package installed in it; packages point at the ones
//! they depend on. Every package carries:
//!
//! - its purl, `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-SUITE`
//!   (see [`deb_purl`]);
//! - the sha256 of its `.deb` and the URL it was downloaded from;
//! - its declared licence as an SPDX expression (`NOASSERTION` in SPDX when
//!   unknown; CycloneDX has no such value, so the component then has no
//!   `licenses`);
//! - its supplier, from the package's `Maintainer` field;
//! - its source package and version. Security trackers (Debian's included)
//!   file advisories against source packages, so scanners need it. SPDX
//!   carries it in `sourceInfo` as `built package from: SOURCE VERSION`;
//!   CycloneDX in the component properties `aquasecurity:trivy:SrcName` and
//!   `aquasecurity:trivy:SrcVersion`. Both are the forms Trivy reads back
//!   when it scans an SBOM (`trivy sbom FILE`).
//!
//! The image contains an operating-system element, `debian` with the
//! version of its `/etc/debian_version` (see [`OsRelease`]), which contains
//! the packages: scanners read the distribution and its version from that
//! element (Trivy: the `operating-system` component, or the SPDX package
//! whose purpose is `OPERATING-SYSTEM`), so the image itself is a
//! `container` (or, for disk images, a `platform` / `OTHER`). One document
//! describes one architecture's packages.
//!
//! The output depends on nothing but the input: packages are sorted, the
//! timestamp is `created` (SOURCE_DATE_EPOCH), and the SPDX document namespace
//! and the CycloneDX serial number are derived from a sha256 of the rest of
//! the document.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::util::{rfc3339, sha256_hex};

/// One Debian binary package installed in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomPackage {
    pub name: String,
    /// The full Debian version, epoch included (`1:2.3-4+deb13u1`).
    pub version: String,
    /// `amd64`, `all`, …
    pub architecture: String,
    /// The source package it was built from.
    pub source: String,
    pub source_version: String,
    /// Lower-case hex sha256 of the `.deb`.
    pub sha256: String,
    pub download_url: String,
    /// SPDX licence expression, e.g. from [`crate::license_from_copyright`];
    /// `None` when unknown.
    pub license: Option<String>,
    /// The package's `Maintainer` field (`Name <email>`), when known.
    pub maintainer: Option<String>,
    /// Packages of this SBOM that this one depends on: a name, or
    /// `name:arch` to pick one architecture of a multi-arch package. A bare
    /// name picks the package of the same architecture, else of `all`, else
    /// every package of that name. Names not in the SBOM (virtual packages,
    /// alternatives that were not installed) are left out.
    pub depends_on: Vec<String>,
}

/// The distribution an image is, as scanners identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    /// os-release `ID`: `debian`.
    pub id: String,
    /// The point release (`13.2`, from `/etc/debian_version`), else the
    /// os-release `VERSION_ID`, else the suite; `trixie/sid` on testing.
    pub version: String,
    /// os-release `PRETTY_NAME`, when there is one.
    pub pretty_name: Option<String>,
}

impl OsRelease {
    /// The distribution of a root with these files: `os_release` the text
    /// of `/usr/lib/os-release` (or `/etc/os-release`), `debian_version`
    /// the text of `/etc/debian_version`; `suite` when both are missing
    /// (a distroless image without base-files).
    pub fn from_files(os_release: Option<&str>, debian_version: Option<&str>, suite: &str) -> Self {
        let mut id = None;
        let mut version_id = None;
        let mut pretty_name = None;
        for line in os_release.unwrap_or("").lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string();
            if value.is_empty() {
                continue;
            }
            match key.trim() {
                "ID" => id = Some(value),
                "VERSION_ID" => version_id = Some(value),
                "PRETTY_NAME" => pretty_name = Some(value),
                _ => {}
            }
        }
        let point = debian_version
            .and_then(|t| t.lines().next())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 64)
            .map(str::to_string);
        OsRelease {
            id: id.unwrap_or_else(|| "debian".into()),
            version: point.or(version_id).unwrap_or_else(|| suite.to_string()),
            pretty_name,
        }
    }
}

/// What the image is, for the SBOM's root element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// Root filesystem tarballs and OCI images.
    Container,
    /// Bootable disk images.
    Disk,
}

/// The image and what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomInput {
    /// The image's name.
    pub image: String,
    pub version: Option<String>,
    pub kind: ImageKind,
    /// The architecture these packages are installed for (one document per
    /// architecture of a multi-architecture build).
    pub architecture: String,
    /// The distribution the image is.
    pub os: OsRelease,
    /// The Debian suite, e.g. `trixie`; goes into the purls' `distro`.
    pub suite: String,
    /// Build time in seconds since the epoch (SOURCE_DATE_EPOCH).
    pub created: i64,
    /// The producing tool as `NAME VERSION`, e.g. `kiln 0.1.0`.
    pub tool: String,
    pub packages: Vec<SbomPackage>,
}

/// Prefix of the SPDX `documentNamespace`. The namespace only has to be a
/// unique URI, not a resolvable one; `.invalid` is reserved for that.
pub const SPDX_NAMESPACE_BASE: &str = "https://kiln.invalid/spdx/";

/// The package URL of a Debian binary package:
/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-SUITE`, with name,
/// version and qualifier values percent-encoded as the purl specification
/// asks (`1:2.0+dfsg-1` becomes `1%3A2.0%2Bdfsg-1`).
pub fn deb_purl(name: &str, version: &str, arch: &str, suite: &str) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}&distro=debian-{}",
        purl_encode(&name.to_ascii_lowercase()),
        purl_encode(version),
        purl_encode(arch),
        purl_encode(suite)
    )
}

/// Percent-encodes everything but the purl's unreserved characters.
fn purl_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Packages in output order, with their resolved dependency edges.
struct Graph<'a> {
    packages: Vec<&'a SbomPackage>,
    /// `deps[i]`: indexes into `packages`, ascending, without `i`.
    deps: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    fn new(input: &'a SbomInput) -> Self {
        let mut packages: Vec<&SbomPackage> = input.packages.iter().collect();
        packages.sort_by(|a, b| {
            (&a.name, &a.architecture, &a.version, &a.sha256).cmp(&(
                &b.name,
                &b.architecture,
                &b.version,
                &b.sha256,
            ))
        });
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in packages.iter().enumerate() {
            by_name.entry(p.name.as_str()).or_default().push(i);
        }
        let deps = packages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut targets = BTreeSet::new();
                for dep in &p.depends_on {
                    let dep = dep.trim();
                    let (name, arch) = match dep.split_once(':') {
                        Some((n, a)) if a != "any" && a != "native" => (n, Some(a)),
                        Some((n, _)) => (n, None),
                        None => (dep, None),
                    };
                    let Some(candidates) = by_name.get(name) else {
                        continue;
                    };
                    let arch_is = |want: &str| {
                        candidates
                            .iter()
                            .copied()
                            .filter(|&c| packages[c].architecture == want)
                            .collect::<Vec<_>>()
                    };
                    let chosen = match arch {
                        Some(a) => arch_is(a),
                        None => {
                            let same = arch_is(&p.architecture);
                            if !same.is_empty() {
                                same
                            } else {
                                let all = arch_is("all");
                                if all.is_empty() {
                                    candidates.clone()
                                } else {
                                    all
                                }
                            }
                        }
                    };
                    targets.extend(chosen.into_iter().filter(|&c| c != i));
                }
                targets.into_iter().collect()
            })
            .collect();
        Graph { packages, deps }
    }
}

/// Makes `base` unique among `taken` by appending `{sep}2`, `{sep}3`, ….
fn unique(base: String, sep: &str, taken: &mut HashSet<String>) -> String {
    let mut id = base.clone();
    let mut n = 2;
    while !taken.insert(id.clone()) {
        id = format!("{base}{sep}{n}");
        n += 1;
    }
    id
}

/// Keeps the characters SPDX allows in identifiers, `-` for the others.
fn spdx_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn split_tool(tool: &str) -> (String, Option<String>) {
    match tool.trim().rsplit_once(char::is_whitespace) {
        Some((name, version)) => (name.trim().to_string(), Some(version.to_string())),
        None => (tool.trim().to_string(), None),
    }
}

fn document_name(input: &SbomInput) -> String {
    match &input.version {
        Some(v) => format!("{}-{v}-{}", input.image, input.architecture),
        None => format!("{}-{}", input.image, input.architecture),
    }
}

/// `Name <email>` as its two parts; the email is `None` when absent.
fn maintainer_parts(m: &str) -> (String, Option<String>) {
    let m = m.trim();
    match (m.find('<'), m.rfind('>')) {
        (Some(a), Some(b)) if a < b => {
            let email = m[a + 1..b].trim();
            (
                m[..a].trim().to_string(),
                (!email.is_empty()).then(|| email.to_string()),
            )
        }
        _ => (m.to_string(), None),
    }
}

/// The SPDX `supplier` of a maintainer: `Organization: NAME (EMAIL)`; a
/// Debian maintainer may be a person or a team, and SPDX has no "either".
fn spdx_supplier(maintainer: Option<&str>) -> String {
    let Some((name, email)) = maintainer.map(maintainer_parts) else {
        return NOASSERTION.into();
    };
    // Parentheses delimit the email in this field.
    let name: String = name
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | '\n'))
        .collect();
    if name.trim().is_empty() {
        return NOASSERTION.into();
    }
    match email {
        Some(e) => format!(
            "Organization: {} ({})",
            name.trim(),
            e.replace(['(', ')'], "")
        ),
        None => format!("Organization: {}", name.trim()),
    }
}

fn source_info(p: &SbomPackage) -> String {
    format!("built package from: {} {}", p.source, p.source_version)
}

fn to_pretty(value: &impl Serialize) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("SBOM serializes");
    s.push('\n');
    s
}

// ---------------------------------------------------------------- SPDX 2.3

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxDocument {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: SpdxCreationInfo,
    packages: Vec<SpdxPackage>,
    relationships: Vec<SpdxRelationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<SpdxExtractedLicense>,
}

#[derive(Serialize)]
struct SpdxCreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    supplier: String,
    download_location: String,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<SpdxChecksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    license_concluded: &'static str,
    license_declared: String,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<SpdxExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
}

impl SpdxPackage {
    /// An element that is no Debian package (the image, the distribution):
    /// nothing known but its name, version and purpose.
    fn described(id: &str, name: &str, version: Option<String>, purpose: &'static str) -> Self {
        SpdxPackage {
            spdx_id: id.to_string(),
            name: name.to_string(),
            version_info: version,
            supplier: NOASSERTION.into(),
            download_location: NOASSERTION.into(),
            files_analyzed: false,
            checksums: Vec::new(),
            source_info: None,
            license_concluded: NOASSERTION,
            license_declared: NOASSERTION.into(),
            copyright_text: NOASSERTION,
            external_refs: Vec::new(),
            primary_package_purpose: Some(purpose),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxChecksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxRelationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxExtractedLicense {
    license_id: String,
    name: String,
    extracted_text: String,
}

const NOASSERTION: &str = "NOASSERTION";

/// The SBOM as an SPDX 2.3 JSON document.
///
/// The document `DESCRIBES` the image (an `OPERATING-SYSTEM` package), which
/// `CONTAINS` every Debian package; `DEPENDS_ON` relationships link the
/// packages. A package's licence is its `licenseDeclared` (what its Debian
/// copyright file says; `licenseConcluded` stays `NOASSERTION`), and every
/// `LicenseRef-` it uses gets a `hasExtractedLicensingInfos` entry.
pub fn spdx_json(input: &SbomInput) -> String {
    let graph = Graph::new(input);
    let image_id = "SPDXRef-Image".to_string();
    let os_id = "SPDXRef-OperatingSystem".to_string();
    let mut taken = HashSet::from([image_id.clone(), os_id.clone()]);
    let ids: Vec<String> = graph
        .packages
        .iter()
        .map(|p| {
            let base = format!(
                "SPDXRef-Package-deb-{}-{}",
                spdx_id_part(&p.name),
                spdx_id_part(&p.architecture)
            );
            unique(base, "-", &mut taken)
        })
        .collect();

    let image_purpose = match input.kind {
        ImageKind::Container => "CONTAINER",
        ImageKind::Disk => "OTHER",
    };
    let mut packages = vec![
        SpdxPackage::described(
            &image_id,
            &input.image,
            input.version.clone(),
            image_purpose,
        ),
        SpdxPackage::described(
            &os_id,
            &input.os.id,
            Some(input.os.version.clone()),
            "OPERATING-SYSTEM",
        ),
    ];
    let mut license_refs = BTreeSet::new();
    for (p, id) in graph.packages.iter().zip(&ids) {
        let license = match p.license.as_deref().map(str::trim) {
            Some(l) if !l.is_empty() => {
                license_refs.extend(
                    l.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                        .filter(|t| t.starts_with("LicenseRef-"))
                        .map(str::to_string),
                );
                l.to_string()
            }
            _ => NOASSERTION.to_string(),
        };
        packages.push(SpdxPackage {
            spdx_id: id.clone(),
            name: p.name.clone(),
            version_info: Some(p.version.clone()),
            supplier: spdx_supplier(p.maintainer.as_deref()),
            download_location: if p.download_url.is_empty() {
                NOASSERTION.into()
            } else {
                p.download_url.clone()
            },
            files_analyzed: false,
            checksums: vec![SpdxChecksum {
                algorithm: "SHA256",
                checksum_value: p.sha256.to_ascii_lowercase(),
            }],
            source_info: Some(source_info(p)),
            license_concluded: NOASSERTION,
            license_declared: license,
            copyright_text: NOASSERTION,
            external_refs: vec![SpdxExternalRef {
                reference_category: "PACKAGE-MANAGER",
                reference_type: "purl",
                reference_locator: deb_purl(&p.name, &p.version, &p.architecture, &input.suite),
            }],
            primary_package_purpose: None,
        });
    }

    let mut relationships = vec![SpdxRelationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES",
        related_spdx_element: image_id.clone(),
    }];
    relationships.push(SpdxRelationship {
        spdx_element_id: image_id.clone(),
        relationship_type: "CONTAINS",
        related_spdx_element: os_id.clone(),
    });
    relationships.extend(ids.iter().map(|id| SpdxRelationship {
        spdx_element_id: os_id.clone(),
        relationship_type: "CONTAINS",
        related_spdx_element: id.clone(),
    }));
    for (i, deps) in graph.deps.iter().enumerate() {
        relationships.extend(deps.iter().map(|&d| SpdxRelationship {
            spdx_element_id: ids[i].clone(),
            relationship_type: "DEPENDS_ON",
            related_spdx_element: ids[d].clone(),
        }));
    }

    let has_extracted_licensing_infos = license_refs
        .into_iter()
        .map(|id| SpdxExtractedLicense {
            name: id["LicenseRef-".len()..].to_string(),
            extracted_text: format!(
                "The licence called '{}' in the Debian copyright file \
                 (/usr/share/doc/PACKAGE/copyright) of each package that declares it; \
                 that file holds its text.",
                &id["LicenseRef-".len()..]
            ),
            license_id: id,
        })
        .collect();

    let (tool_name, tool_version) = split_tool(&input.tool);
    let creator = match tool_version {
        Some(v) => format!("Tool: {}-{v}", tool_name.replace(char::is_whitespace, "-")),
        None => format!("Tool: {}", tool_name.replace(char::is_whitespace, "-")),
    };
    let name = document_name(input);
    let mut doc = SpdxDocument {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: name.clone(),
        document_namespace: String::new(),
        creation_info: SpdxCreationInfo {
            created: rfc3339(input.created),
            creators: vec![creator],
        },
        packages,
        relationships,
        has_extracted_licensing_infos,
    };
    let digest = sha256_hex(to_pretty(&doc).as_bytes());
    let segment: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    doc.document_namespace = format!("{SPDX_NAMESPACE_BASE}{segment}-{digest}");
    to_pretty(&doc)
}

// ----------------------------------------------------------- CycloneDX 1.5

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CdxBom {
    #[serde(rename = "$schema")]
    schema: &'static str,
    bom_format: &'static str,
    spec_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial_number: Option<String>,
    version: u32,
    metadata: CdxMetadata,
    components: Vec<CdxComponent>,
    dependencies: Vec<CdxDependency>,
}

#[derive(Serialize)]
struct CdxMetadata {
    timestamp: String,
    tools: CdxTools,
    component: CdxComponent,
}

#[derive(Serialize)]
struct CdxTools {
    components: Vec<CdxComponent>,
}

#[derive(Serialize)]
struct CdxComponent {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "bom-ref", skip_serializing_if = "Option::is_none")]
    bom_ref: Option<String>,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    supplier: Option<CdxSupplier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hashes: Vec<CdxHash>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    licenses: Vec<CdxLicenseExpression>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purl: Option<String>,
    #[serde(rename = "externalReferences", skip_serializing_if = "Vec::is_empty")]
    external_references: Vec<CdxExternalReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    properties: Vec<CdxProperty>,
}

impl CdxComponent {
    fn new(kind: &'static str, name: String) -> Self {
        CdxComponent {
            kind,
            bom_ref: None,
            name,
            supplier: None,
            version: None,
            description: None,
            hashes: Vec::new(),
            licenses: Vec::new(),
            purl: None,
            external_references: Vec::new(),
            properties: Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct CdxSupplier {
    name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    contact: Vec<CdxContact>,
}

#[derive(Serialize)]
struct CdxContact {
    email: String,
}

#[derive(Serialize)]
struct CdxHash {
    alg: &'static str,
    content: String,
}

#[derive(Serialize)]
struct CdxLicenseExpression {
    expression: String,
}

#[derive(Serialize)]
struct CdxExternalReference {
    #[serde(rename = "type")]
    kind: &'static str,
    url: String,
}

#[derive(Serialize)]
struct CdxProperty {
    name: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CdxDependency {
    #[serde(rename = "ref")]
    reference: String,
    depends_on: Vec<String>,
}

/// The SBOM as a CycloneDX 1.5 JSON document.
///
/// `metadata.component` is the image (type `container`, or `platform` for
/// disk images); the first component is the distribution (type
/// `operating-system`, named `debian` with its point release); packages are
/// `library` components whose `bom-ref` is their purl. `dependencies` lists
/// the image as depending on the distribution, the distribution on every
/// package, and each package with the packages it depends on (an empty list
/// when it has none). The serial number
/// is a UUID built from the sha256 of the rest of the document (shaped as a
/// version 5 UUID, which the schema requires).
pub fn cyclonedx_json(input: &SbomInput) -> String {
    let graph = Graph::new(input);
    let root_ref = format!("kiln-image:{}", document_name(input));
    let os_ref = format!("kiln-os:{}-{}", input.os.id, input.os.version);
    let mut taken = HashSet::from([root_ref.clone(), os_ref.clone()]);
    let refs: Vec<String> = graph
        .packages
        .iter()
        .map(|p| {
            let purl = deb_purl(&p.name, &p.version, &p.architecture, &input.suite);
            unique(purl, "#", &mut taken)
        })
        .collect();

    let mut os = CdxComponent::new("operating-system", input.os.id.clone());
    os.bom_ref = Some(os_ref.clone());
    os.version = Some(input.os.version.clone());
    os.description = input.os.pretty_name.clone();
    os.properties = vec![
        CdxProperty {
            name: "aquasecurity:trivy:Class",
            value: "os-pkgs".into(),
        },
        CdxProperty {
            name: "aquasecurity:trivy:Type",
            value: input.os.id.clone(),
        },
    ];
    let mut components = vec![os];
    components.extend(graph.packages.iter().zip(&refs).map(|(p, bom_ref)| {
        let mut c = CdxComponent::new("library", p.name.clone());
        c.bom_ref = Some(bom_ref.clone());
        c.version = Some(p.version.clone());
        c.supplier = p.maintainer.as_deref().map(|m| {
            let (name, email) = maintainer_parts(m);
            CdxSupplier {
                name,
                contact: email
                    .map(|email| CdxContact { email })
                    .into_iter()
                    .collect(),
            }
        });
        c.hashes = vec![CdxHash {
            alg: "SHA-256",
            content: p.sha256.to_ascii_lowercase(),
        }];
        if let Some(l) = p.license.as_deref().map(str::trim) {
            if !l.is_empty() && l != NOASSERTION {
                c.licenses = vec![CdxLicenseExpression {
                    expression: l.to_string(),
                }];
            }
        }
        c.purl = Some(deb_purl(&p.name, &p.version, &p.architecture, &input.suite));
        if !p.download_url.is_empty() {
            c.external_references = vec![CdxExternalReference {
                kind: "distribution",
                url: p.download_url.clone(),
            }];
        }
        c.properties = vec![
            CdxProperty {
                name: "aquasecurity:trivy:SrcName",
                value: p.source.clone(),
            },
            CdxProperty {
                name: "aquasecurity:trivy:SrcVersion",
                value: p.source_version.clone(),
            },
        ];
        c
    }));

    let mut dependencies = vec![
        CdxDependency {
            reference: root_ref.clone(),
            depends_on: vec![os_ref.clone()],
        },
        CdxDependency {
            reference: os_ref,
            depends_on: refs.clone(),
        },
    ];
    dependencies.extend(
        graph
            .deps
            .iter()
            .enumerate()
            .map(|(i, deps)| CdxDependency {
                reference: refs[i].clone(),
                depends_on: deps.iter().map(|&d| refs[d].clone()).collect(),
            }),
    );

    let (tool_name, tool_version) = split_tool(&input.tool);
    let mut tool = CdxComponent::new("application", tool_name);
    tool.version = tool_version;
    let kind = match input.kind {
        ImageKind::Container => "container",
        ImageKind::Disk => "platform",
    };
    let mut root = CdxComponent::new(kind, input.image.clone());
    root.bom_ref = Some(root_ref);
    root.version = input.version.clone();
    root.properties = vec![CdxProperty {
        name: "kiln:architecture",
        value: input.architecture.clone(),
    }];

    let mut bom = CdxBom {
        schema: "http://cyclonedx.org/schema/bom-1.5.schema.json",
        bom_format: "CycloneDX",
        spec_version: "1.5",
        serial_number: None,
        version: 1,
        metadata: CdxMetadata {
            timestamp: rfc3339(input.created),
            tools: CdxTools {
                components: vec![tool],
            },
            component: root,
        },
        components,
        dependencies,
    };
    let digest = sha256_hex(to_pretty(&bom).as_bytes());
    bom.serial_number = Some(uuid_from_digest(&digest));
    to_pretty(&bom)
}

/// `urn:uuid:` from the first 128 bits of a hex digest, with the version
/// nibble set to 5 and the RFC 4122 variant bits.
fn uuid_from_digest(hex_digest: &str) -> String {
    let mut bytes = hex::decode(&hex_digest[..32]).expect("hex digest");
    bytes[6] = (bytes[6] & 0x0f) | 0x50;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purl_encoding() {
        assert_eq!(
            deb_purl("libstdc++6", "1:14.2.0-19+b1", "amd64", "trixie"),
            "pkg:deb/debian/libstdc%2B%2B6@1%3A14.2.0-19%2Bb1?arch=amd64&distro=debian-trixie"
        );
        assert_eq!(
            deb_purl("bash", "5.2.37-2", "all", "trixie"),
            "pkg:deb/debian/bash@5.2.37-2?arch=all&distro=debian-trixie"
        );
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_from_digest(&sha256_hex(b"x"));
        assert_eq!(u.len(), "urn:uuid:".len() + 36);
        assert_eq!(&u[23..24], "5");
        assert!(matches!(&u[28..29], "8" | "9" | "a" | "b"));
    }

    fn pkg(name: &str, arch: &str, deps: &[&str]) -> SbomPackage {
        SbomPackage {
            name: name.into(),
            version: "1".into(),
            architecture: arch.into(),
            source: name.into(),
            source_version: "1".into(),
            sha256: "0".repeat(64),
            download_url: String::new(),
            license: None,
            maintainer: None,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn dependency_resolution_prefers_same_arch() {
        let input = SbomInput {
            image: "x".into(),
            version: None,
            kind: ImageKind::Container,
            architecture: "amd64".into(),
            os: OsRelease::from_files(None, None, "trixie"),
            suite: "trixie".into(),
            created: 0,
            tool: "kiln 0.1.0".into(),
            packages: vec![
                pkg(
                    "app",
                    "amd64",
                    &["libfoo", "data", "missing", "libfoo:i386", "app"],
                ),
                pkg("libfoo", "i386", &[]),
                pkg("libfoo", "amd64", &[]),
                pkg("data", "all", &[]),
            ],
        };
        let g = Graph::new(&input);
        let names: Vec<_> = g
            .packages
            .iter()
            .map(|p| format!("{}:{}", p.name, p.architecture))
            .collect();
        assert_eq!(
            names,
            ["app:amd64", "data:all", "libfoo:amd64", "libfoo:i386"]
        );
        assert_eq!(g.deps[0], vec![1, 2, 3]);
    }
}

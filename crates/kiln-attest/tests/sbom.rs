//! What the SBOMs and the statement say, and that they say it the same way
//! every time.

mod common;

use common::{provenance_input, sbom_input};
use kiln_attest::{
    cyclonedx_json, sign_envelope, spdx_json, statement, ImageKind, OsRelease, SbomPackage,
    SigningKey,
};
use serde_json::Value;

/// A throwaway test key (openssl genpkey -algorithm ed25519).
const PKCS8_ED25519: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEILDIh5jrXwykcAFklH3V9LY5zuMOEf4vL0XtxHS4kl3G
-----END PRIVATE KEY-----
";

#[test]
fn same_input_same_bytes() {
    let input = sbom_input();
    let mut shuffled = input.clone();
    shuffled.packages.reverse();
    for p in &mut shuffled.packages {
        p.depends_on.reverse();
    }
    assert_eq!(spdx_json(&input), spdx_json(&input.clone()));
    assert_eq!(spdx_json(&input), spdx_json(&shuffled));
    assert_eq!(cyclonedx_json(&input), cyclonedx_json(&input.clone()));
    assert_eq!(cyclonedx_json(&input), cyclonedx_json(&shuffled));
    let prov = provenance_input();
    assert_eq!(statement(&prov), statement(&prov.clone()));
    let key = SigningKey::from_pem(PKCS8_ED25519).unwrap();
    assert_eq!(
        sign_envelope(&statement(&prov), &key),
        sign_envelope(&statement(&prov.clone()), &key)
    );

    // And the ids derived from the content change with it.
    let mut changed = input.clone();
    changed.packages[0].sha256 = common::sha("another build");
    let ns = |doc: &str| {
        serde_json::from_str::<Value>(doc).unwrap()["documentNamespace"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let serial = |doc: &str| {
        serde_json::from_str::<Value>(doc).unwrap()["serialNumber"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(ns(&spdx_json(&input)), ns(&spdx_json(&changed)));
    assert_ne!(
        serial(&cyclonedx_json(&input)),
        serial(&cyclonedx_json(&changed))
    );
    assert!(ns(&spdx_json(&input))
        .starts_with("https://kiln.invalid/spdx/debian-trixie-minimal-2025.06.1-"));
}

fn spdx_package<'a>(doc: &'a Value, name: &str, arch: &str) -> &'a Value {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["name"] == name
                && p["externalRefs"][0]["referenceLocator"]
                    .as_str()
                    .is_some_and(|l| l.contains(&format!("arch={arch}&")))
        })
        .unwrap_or_else(|| panic!("no package {name}:{arch}"))
}

#[test]
fn spdx_content() {
    let doc: Value = serde_json::from_str(&spdx_json(&sbom_input())).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["creationInfo"]["created"], "2025-06-15T15:06:40Z");
    assert_eq!(doc["creationInfo"]["creators"][0], "Tool: kiln-0.1.0");
    let rels = doc["relationships"].as_array().unwrap();
    let has = |from: &str, kind: &str, to: &str| {
        rels.iter().any(|r| {
            r["spdxElementId"] == from
                && r["relationshipType"] == kind
                && r["relatedSpdxElement"] == to
        })
    };
    assert!(has("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image"));
    assert_eq!(doc["packages"][0]["SPDXID"], "SPDXRef-Image");
    // The image is a container; the distribution is its own element, which
    // scanners read as the OS family and version (never the image's name).
    assert_eq!(doc["packages"][0]["primaryPackagePurpose"], "CONTAINER");
    let os = &doc["packages"][1];
    assert_eq!(os["SPDXID"], "SPDXRef-OperatingSystem");
    assert_eq!(os["primaryPackagePurpose"], "OPERATING-SYSTEM");
    assert_eq!(os["name"], "debian");
    assert_eq!(os["versionInfo"], "13.1");
    assert!(has("SPDXRef-Image", "CONTAINS", "SPDXRef-OperatingSystem"));
    let purposes: Vec<_> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["primaryPackagePurpose"] == "OPERATING-SYSTEM")
        .collect();
    assert_eq!(purposes.len(), 1, "exactly one operating system");

    let zlib = spdx_package(&doc, "zlib1g", "amd64");
    assert_eq!(zlib["versionInfo"], "1:1.3.dfsg+really1.3.1-1+b1");
    assert_eq!(
        zlib["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/zlib1g@1%3A1.3.dfsg%2Breally1.3.1-1%2Bb1?arch=amd64&distro=debian-trixie"
    );
    assert_eq!(zlib["externalRefs"][0]["referenceType"], "purl");
    assert_eq!(
        zlib["sourceInfo"],
        "built package from: zlib 1:1.3.dfsg+really1.3.1-1"
    );
    assert_eq!(zlib["checksums"][0]["algorithm"], "SHA256");
    assert_eq!(
        zlib["checksums"][0]["checksumValue"],
        common::sha("zlib1g_1:1.3.dfsg+really1.3.1-1+b1_amd64.deb")
    );
    assert_eq!(zlib["licenseDeclared"], "Zlib");
    // Suppliers come from Maintainer; unknown stays NOASSERTION.
    assert_eq!(zlib["supplier"], "NOASSERTION");
    assert_eq!(
        spdx_package(&doc, "libc6", "amd64")["supplier"],
        "Organization: Debian glibc Maintainers (glibc@lists.invalid)"
    );
    assert!(zlib["downloadLocation"]
        .as_str()
        .unwrap()
        .ends_with("zlib1g_1.3.dfsg+really1.3.1-1+b1_amd64.deb"));

    let libc = spdx_package(&doc, "libc6", "amd64");
    assert_eq!(libc["licenseDeclared"], "NOASSERTION");
    let id = |p: &Value| p["SPDXID"].as_str().unwrap().to_string();
    assert!(has("SPDXRef-OperatingSystem", "CONTAINS", &id(libc)));
    assert!(!has("SPDXRef-Image", "CONTAINS", &id(libc)));
    assert!(has(&id(zlib), "DEPENDS_ON", &id(libc)));
    // Multi-arch: each libc6 depends on the libgcc-s1 of its architecture.
    let gcc64 = spdx_package(&doc, "libgcc-s1", "amd64");
    let gcc32 = spdx_package(&doc, "libgcc-s1", "i386");
    let libc32 = spdx_package(&doc, "libc6", "i386");
    assert!(has(&id(libc), "DEPENDS_ON", &id(gcc64)));
    assert!(!has(&id(libc), "DEPENDS_ON", &id(gcc32)));
    assert!(has(&id(libc32), "DEPENDS_ON", &id(gcc32)));
    assert!(has(&id(gcc32), "DEPENDS_ON", &id(libc32)));
    // 14 packages + the image + the OS; the libstdc++6 id has no '+'.
    assert_eq!(doc["packages"].as_array().unwrap().len(), 16);
    assert_eq!(
        id(spdx_package(&doc, "libstdc++6", "amd64")),
        "SPDXRef-Package-deb-libstdc--6-amd64"
    );

    let refs: Vec<&str> = doc["hasExtractedLicensingInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["licenseId"].as_str().unwrap())
        .collect();
    assert_eq!(
        refs,
        ["LicenseRef-other-BSD-like", "LicenseRef-public-domain"]
    );
}

#[test]
fn cyclonedx_content() {
    let bom: Value = serde_json::from_str(&cyclonedx_json(&sbom_input())).unwrap();
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(bom["metadata"]["timestamp"], "2025-06-15T15:06:40Z");
    assert_eq!(bom["metadata"]["component"]["type"], "container");
    assert_eq!(
        bom["metadata"]["component"]["name"],
        "debian-trixie-minimal"
    );
    assert_eq!(bom["metadata"]["tools"]["components"][0]["name"], "kiln");
    assert_eq!(
        bom["metadata"]["tools"]["components"][0]["version"],
        "0.1.0"
    );
    let components = bom["components"].as_array().unwrap();
    assert_eq!(components.len(), 15);
    let os: Vec<_> = components
        .iter()
        .filter(|c| c["type"] == "operating-system")
        .collect();
    assert_eq!(os.len(), 1, "exactly one operating system");
    assert_eq!(os[0]["name"], "debian");
    assert_eq!(os[0]["version"], "13.1");
    assert_eq!(os[0]["description"], "Debian GNU/Linux 13 (trixie)");
    let zlib = components.iter().find(|c| c["name"] == "zlib1g").unwrap();
    let purl =
        "pkg:deb/debian/zlib1g@1%3A1.3.dfsg%2Breally1.3.1-1%2Bb1?arch=amd64&distro=debian-trixie";
    assert_eq!(zlib["purl"], purl);
    assert_eq!(zlib["bom-ref"], purl);
    assert_eq!(zlib["hashes"][0]["alg"], "SHA-256");
    assert_eq!(zlib["licenses"][0]["expression"], "Zlib");
    assert_eq!(zlib["externalReferences"][0]["type"], "distribution");
    let prop = |c: &Value, name: &str| {
        c["properties"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["value"].clone())
    };
    assert_eq!(prop(zlib, "aquasecurity:trivy:SrcName").unwrap(), "zlib");
    assert_eq!(
        prop(zlib, "aquasecurity:trivy:SrcVersion").unwrap(),
        "1:1.3.dfsg+really1.3.1-1"
    );
    let libc = components.iter().find(|c| c["name"] == "libc6").unwrap();
    assert_eq!(libc["supplier"]["name"], "Debian glibc Maintainers");
    assert_eq!(
        libc["supplier"]["contact"][0]["email"],
        "glibc@lists.invalid"
    );
    assert!(zlib.get("supplier").is_none());
    assert!(
        libc.get("licenses").is_none(),
        "unknown licence: no licenses"
    );

    let deps = bom["dependencies"].as_array().unwrap();
    assert_eq!(deps.len(), 16);
    assert_eq!(deps[0]["ref"], bom["metadata"]["component"]["bom-ref"]);
    assert_eq!(deps[0]["dependsOn"], serde_json::json!([os[0]["bom-ref"]]));
    assert_eq!(deps[1]["ref"], os[0]["bom-ref"]);
    assert_eq!(deps[1]["dependsOn"].as_array().unwrap().len(), 14);
    let zlib_deps = deps.iter().find(|d| d["ref"] == purl).unwrap();
    assert_eq!(
        zlib_deps["dependsOn"],
        serde_json::json!(["pkg:deb/debian/libc6@2.41-12?arch=amd64&distro=debian-trixie"])
    );
    let serial = bom["serialNumber"].as_str().unwrap();
    assert!(
        serial.starts_with("urn:uuid:") && serial.len() == 45,
        "{serial}"
    );
}

#[test]
fn statement_shape() {
    let bytes = statement(&provenance_input());
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with("{\"_type\":\"https://in-toto.io/Statement/v1\",\"predicate\":{"),
        "{text}"
    );
    assert!(!text.contains('\n') && !text.contains(": "));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(v["subject"][0]["name"], "debian-trixie-minimal.raw");
    assert_eq!(
        v["predicate"]["runDetails"]["builder"]["version"]["kiln"],
        "0.1.0"
    );
    assert_eq!(
        v["predicate"]["runDetails"]["metadata"]["finishedOn"],
        "2025-06-15T15:08:43Z"
    );
    assert_eq!(
        v["predicate"]["buildDefinition"]["externalParameters"]["suite"],
        "trixie"
    );
    assert_eq!(
        v["predicate"]["buildDefinition"]["resolvedDependencies"][0]["name"],
        "kiln.lock"
    );
    assert!(v["predicate"]["buildDefinition"]["resolvedDependencies"][1]
        .get("name")
        .is_none());
}

#[test]
fn parse_statement_rejects_other_documents() {
    use kiln_attest::{parse_statement, AttestError};
    let good: Value = serde_json::from_slice(&statement(&provenance_input())).unwrap();
    let bad = |mutate: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        mutate(&mut v);
        let err = parse_statement(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, AttestError::Statement { .. }));
        err.to_string()
    };
    assert!(bad(&|v| v["_type"] = "https://in-toto.io/Statement/v0.1".into()).contains("_type"));
    assert!(
        bad(&|v| v["predicateType"] = "https://slsa.dev/provenance/v0.2".into())
            .contains("predicateType")
    );
    assert!(bad(&|v| v["subject"] = Value::Array(vec![])).contains("no subject"));
    assert!(
        bad(&|v| v["subject"][1]["digest"] = serde_json::json!({"sha512": "00"}))
            .contains("subject[1]")
    );
    assert!(bad(&|v| {
        v["predicate"]["buildDefinition"]["resolvedDependencies"][3]
            .as_object_mut()
            .unwrap()
            .remove("digest");
    })
    .contains("resolvedDependencies[3]"));
    assert!(parse_statement(b"not json").is_err());
}

#[test]
fn no_packages_still_valid_shape() {
    let mut input = sbom_input();
    input.packages = Vec::<SbomPackage>::new();
    input.version = None;
    let doc: Value = serde_json::from_str(&spdx_json(&input)).unwrap();
    assert_eq!(doc["packages"].as_array().unwrap().len(), 2);
    assert!(doc.get("hasExtractedLicensingInfos").is_none());
    let bom: Value = serde_json::from_str(&cyclonedx_json(&input)).unwrap();
    assert!(bom["metadata"]["component"].get("version").is_none());
}

#[test]
fn the_distribution_comes_from_the_image_files() {
    let os_release = "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nNAME=\"Debian GNU/Linux\"\nVERSION_CODENAME=trixie\nID=debian\n";
    // Testing has no VERSION_ID; debian_version says trixie/sid.
    let testing = OsRelease::from_files(Some(os_release), Some("trixie/sid\n"), "trixie");
    assert_eq!(
        (testing.id.as_str(), testing.version.as_str()),
        ("debian", "trixie/sid")
    );
    // No debian_version: VERSION_ID.
    let v = OsRelease::from_files(Some("ID=debian\nVERSION_ID=\"12\"\n"), None, "bookworm");
    assert_eq!(v.version, "12");
    // Neither (a distroless image without base-files): Debian and the suite.
    let bare = OsRelease::from_files(None, None, "bookworm");
    assert_eq!(
        (bare.id.as_str(), bare.version.as_str()),
        ("debian", "bookworm")
    );
    assert_eq!(bare.pretty_name, None);
    // A hostile debian_version (a megabyte on one line) is not an OS version.
    let long = "9".repeat(1 << 20);
    let v = OsRelease::from_files(Some("ID=debian\nVERSION_ID=13\n"), Some(&long), "trixie");
    assert_eq!(v.version, "13");
}

#[test]
fn a_disk_image_is_a_platform_not_a_container() {
    let mut input = sbom_input();
    input.kind = ImageKind::Disk;
    let bom: Value = serde_json::from_str(&cyclonedx_json(&input)).unwrap();
    assert_eq!(bom["metadata"]["component"]["type"], "platform");
    let doc: Value = serde_json::from_str(&spdx_json(&input)).unwrap();
    assert_eq!(doc["packages"][0]["primaryPackagePurpose"], "OTHER");
    assert_eq!(
        doc["packages"][1]["primaryPackagePurpose"],
        "OPERATING-SYSTEM"
    );
}

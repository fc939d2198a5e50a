//! The SBOMs and the provenance statement, checked by independent validators:
//! spdx-tools' `pyspdxtools`, the official CycloneDX 1.5 JSON schema, and the
//! in-toto attestation framework's protobuf bindings.
//!
//! Needs: `pip install spdx-tools jsonschema cyclonedx-python-lib
//! packageurl-python in-toto-attestation`.

mod common;

use std::path::{Path, PathBuf};

use common::{provenance_input, run, sbom_input, text};
use kiln_attest::{cyclonedx_json, license_from_copyright, spdx_json, statement, SbomPackage};
use serde_json::Value;

const PIP: &str = "pip install spdx-tools jsonschema cyclonedx-python-lib \
                   packageurl-python in-toto-attestation";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

/// Runs pyspdxtools on `doc`; returns (passed, output).
fn pyspdxtools(doc: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("image.spdx.json");
    std::fs::write(&file, doc).unwrap();
    let file = file.to_str().unwrap();
    let out = match std::process::Command::new("pyspdxtools")
        .args(["-i", file])
        .output()
    {
        Ok(out) => out,
        // Not on PATH: the same tool through the interpreter.
        Err(_) => run(
            "python3",
            &["-m", "spdx_tools.spdx.clitools.pyspdxtools", "-i", file],
            dir.path(),
            PIP,
        ),
    };
    let output = text(&out);
    assert!(
        !output.contains("No module named"),
        "the SPDX validator is not installed ({PIP}):\n{output}"
    );
    let clean = out.status.success()
        && !output.contains("ERROR")
        && !output.to_lowercase().contains("invalid");
    (clean, output)
}

/// Runs one of the Python validators in tests/; returns (passed, output).
fn python_validator(name: &str, content: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, content).unwrap();
    let out = run(
        "python3",
        &[script(name).to_str().unwrap(), file.to_str().unwrap()],
        dir.path(),
        "apt-get install python3",
    );
    let output = text(&out);
    assert_ne!(
        out.status.code(),
        Some(2),
        "{name} cannot run: a validator package is missing ({PIP}):\n{output}"
    );
    (out.status.success(), output)
}

#[test]
fn spdx_passes_pyspdxtools() {
    let doc = spdx_json(&sbom_input());
    let (ok, output) = pyspdxtools(&doc);
    assert!(
        ok,
        "pyspdxtools rejected the SPDX document:\n{output}\n{doc}"
    );
}

#[test]
fn pyspdxtools_catches_a_broken_spdx_document() {
    // The validator must be able to fail: a dangling relationship and an
    // undefined LicenseRef.
    let mut doc: Value = serde_json::from_str(&spdx_json(&sbom_input())).unwrap();
    doc["relationships"][1]["relatedSpdxElement"] = "SPDXRef-nowhere".into();
    doc["packages"][1]["licenseDeclared"] = "LicenseRef-undefined".into();
    let (ok, output) = pyspdxtools(&doc.to_string());
    assert!(!ok, "pyspdxtools accepted a broken document:\n{output}");
}

#[test]
fn licences_from_copyright_files_are_valid_spdx() {
    // Every Debian name Kiln maps, and a few it does not, through DEP-5 text
    // and into an SPDX document that pyspdxtools must accept.
    let names = [
        "GPL-1+",
        "GPL-2",
        "GPL-2+",
        "GPL-3",
        "GPL-3+",
        "LGPL-2",
        "LGPL-2+",
        "LGPL-2.1",
        "LGPL-2.1+",
        "LGPL-3",
        "LGPL-3+",
        "AGPL-3",
        "AGPL-3+",
        "GFDL-1.2",
        "GFDL-1.3+",
        "GFDL-NIV-1.2+",
        "GFDL-NIV-1.3",
        "Expat",
        "MIT",
        "MIT-0",
        "X11",
        "ISC",
        "Zlib",
        "zlib",
        "BSD-2-clause",
        "BSD-3-clause",
        "BSD-4-clause",
        "0BSD",
        "Apache-1.0",
        "Apache-1.1",
        "Apache-2.0",
        "Artistic",
        "Artistic-1.0",
        "Artistic-2.0",
        "Perl",
        "MPL-1.0",
        "MPL-1.1",
        "MPL-1.1+",
        "MPL-2.0",
        "EPL-1.0",
        "EPL-2.0",
        "CDDL-1.0",
        "CC0",
        "CC0-1.0",
        "BSL-1.0",
        "Boost-1.0",
        "OFL-1.1",
        "SIL-OFL-1.1",
        "PSF-2",
        "Python-2.0",
        "OpenSSL",
        "SSLeay",
        "curl",
        "Unlicense",
        "WTFPL",
        "PostgreSQL",
        "Sleepycat",
        "libpng",
        "libpng-2.0",
        "IJG",
        "FTL",
        "Vim",
        "Ruby",
        "Tcl",
        "ZPL-2.1",
        "Unicode-DFS-2016",
        "CC-BY-3.0",
        "CC-BY-SA-4.0",
        "CC-BY-NC-ND-2.5",
        "public-domain",
        "permissive",
        "GPL-2+ with Font exception",
        "GPL-3+ with Bison exception",
        "GPL-2+ with Libtool exception",
        "GPL-3+ with GCC-3.1 exception",
        "GPL-2+ with Classpath exception",
        "GPL-2+ with OpenSSL exception",
        "GPL-2+ or Artistic, and BSD-3-clause",
        "Expat and Perl",
        "LGPL-2.1+ or GPL-3+ or MPL-2.0",
        "other/BSD like",
    ];
    let mut input = sbom_input();
    let template = input.packages[0].clone();
    input.packages = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let copyright = format!(
                "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                 Upstream-Name: p{i}\n\nFiles: *\nCopyright: 2020 Someone\nLicense: {name}\n \
                 The licence text.\n"
            );
            let license = license_from_copyright(&copyright);
            assert!(license.is_some(), "{name}");
            SbomPackage {
                name: format!("p{i}"),
                license,
                depends_on: Vec::new(),
                ..template.clone()
            }
        })
        .collect();
    let doc = spdx_json(&input);
    let (ok, output) = pyspdxtools(&doc);
    assert!(ok, "pyspdxtools rejected mapped licences:\n{output}");
}

#[test]
fn cyclonedx_passes_the_official_schema() {
    let bom = cyclonedx_json(&sbom_input());
    let (ok, output) = python_validator("validate_cyclonedx.py", bom.as_bytes());
    assert!(ok, "CycloneDX 1.5 validation failed:\n{output}\n{bom}");
    assert!(output.contains("valid CycloneDX 1.5"), "{output}");
}

#[test]
fn cyclonedx_schema_catches_a_broken_document() {
    let mut bom: Value = serde_json::from_str(&cyclonedx_json(&sbom_input())).unwrap();
    bom["components"][1]["hashes"][0]["alg"] = "SHA256".into(); // not a schema enum value (0 is the OS)
    bom["serialNumber"] = "urn:uuid:not-a-uuid".into();
    let (ok, output) = python_validator("validate_cyclonedx.py", bom.to_string().as_bytes());
    assert!(!ok, "the schema accepted a broken BOM:\n{output}");
    assert!(output.contains("serialNumber"), "{output}");
    assert!(output.contains("alg"), "{output}");
}

#[test]
fn provenance_statement_passes_in_toto_bindings() {
    let payload = statement(&provenance_input());
    let (ok, output) = python_validator("validate_provenance.py", &payload);
    assert!(ok, "in-toto validation failed:\n{output}");
    assert!(output.contains("2 subjects"), "{output}");
}

#[test]
fn in_toto_bindings_catch_a_broken_statement() {
    let mut stmt: Value = serde_json::from_slice(&statement(&provenance_input())).unwrap();
    stmt["predicate"]["runDetails"]["metadata"]["startedOn"] = "yesterday".into();
    let (ok, output) = python_validator("validate_provenance.py", stmt.to_string().as_bytes());
    assert!(!ok, "accepted a bad timestamp:\n{output}");

    let mut stmt: Value = serde_json::from_slice(&statement(&provenance_input())).unwrap();
    stmt["subject"] = Value::Array(Vec::new());
    let (ok, output) = python_validator("validate_provenance.py", stmt.to_string().as_bytes());
    assert!(!ok, "accepted a statement without subjects:\n{output}");
}

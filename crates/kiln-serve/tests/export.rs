//! The static export: the same JSON as the API, written whole or not at all.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn the_export_holds_what_the_api_serves() {
    let d = tempfile::tempdir().unwrap();
    let cat = catalog(d.path());
    let out = d.path().join("www/finder");
    let report = kiln_serve::export(&cat, &out).unwrap();
    assert_eq!(report.dir, out);
    assert_eq!((report.images, report.versions), (4, 5));
    assert_eq!(report.unsafe_names, [HOSTILE_NAME]);
    assert_eq!(report.without_packages, 0);
    let mut files: Vec<_> = report
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            ".kiln-finder",
            "api/v1/facets.json",
            "api/v1/images.json",
            "api/v1/images/db.json",
            "api/v1/images/tiny.json",
            "api/v1/images/web.json",
            "api/v1/packages.json",
            "index.html"
        ]
    );
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains(r#"<meta name="kiln-finder-mode" content="static">"#));

    let finder = Finder::start(&cat);
    assert_eq!(
        read_json(&out.join("api/v1/images.json")),
        get(finder.addr, "/api/v1/images").json(),
        "images.json is the unfiltered API answer"
    );
    assert_eq!(
        read_json(&out.join("api/v1/facets.json")),
        get(finder.addr, "/api/v1/facets").json()
    );
    assert_eq!(
        read_json(&out.join("api/v1/images/web.json")),
        get(finder.addr, "/api/v1/images/web").json()
    );
    let packages = read_json(&out.join("api/v1/packages.json"));
    assert_eq!(packages["schema-version"], 1);
    assert_eq!(packages["missing"], Value::Array(vec![]));
    let web2 = &get(finder.addr, "/api/v1/images/web").json()["versions"][0];
    let sha = web2["manifest-sha256"].as_str().unwrap();
    assert_eq!(
        packages["packages"][sha],
        serde_json::json!([
            {"name": "curl", "version": "8.14.1-2", "architecture": "amd64"},
            {"name": "openssl", "version": "3.5.4-1~deb13u1", "architecture": "amd64"}
        ]),
        "every package the catalog recorded, by name"
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "a web server must be able to read it");
    assert_eq!(
        listing(&d.path().join("www")),
        ["finder"],
        "no temporary left"
    );
}

#[test]
fn a_new_export_replaces_the_old_one_whole_and_a_failed_one_nothing() {
    let d = tempfile::tempdir().unwrap();
    let cat = catalog(d.path());
    let out = d.path().join("finder");
    kiln_serve::export(&cat, &out).unwrap();
    std::fs::write(out.join("api/v1/images/gone.json"), "{}").unwrap();
    kiln_serve::export(&cat, &out).unwrap();
    assert!(
        !out.join("api/v1/images/gone.json").exists(),
        "the new export kept a stale file"
    );
    assert!(out.join("api/v1/images/web.json").is_file());
    assert_eq!(
        listing(d.path())
            .iter()
            .filter(|n| n.contains("finder"))
            .count(),
        1
    );

    // A failing export (the catalog is broken) leaves the good one.
    let before = std::fs::read(out.join("api/v1/images.json")).unwrap();
    let junk = d.path().join("junk.sqlite");
    std::fs::write(&junk, "not a database").unwrap();
    assert!(kiln_serve::export(&junk, &out).is_err());
    assert_eq!(
        std::fs::read(out.join("api/v1/images.json")).unwrap(),
        before
    );

    // A build directory changed after it was recorded: the export lists
    // what the catalog recorded, never what the directory says now.
    let web1: PathBuf = d.path().join("builds/build-1735689600/manifest.json");
    let text = std::fs::read_to_string(&web1).unwrap();
    std::fs::write(&web1, text.replace("3.5.1-1", "9.9.9-9")).unwrap();
    let r = kiln_serve::export(&cat, &out).unwrap();
    assert_eq!(r.without_packages, 0);
    let packages = read_json(&out.join("api/v1/packages.json"));
    assert!(packages["missing"].as_array().unwrap().is_empty());
    assert!(!packages.to_string().contains("9.9.9-9"));
    assert!(packages.to_string().contains("3.5.1-1"));
}

#[test]
fn a_directory_that_is_no_export_is_refused_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let cat = catalog(d.path());
    let tree = d.path().join("download-tree");
    std::fs::create_dir_all(tree.join("channels")).unwrap();
    std::fs::write(tree.join("channels/stable.json"), "{}").unwrap();
    let e = kiln_serve::export(&cat, &tree).unwrap_err();
    assert!(
        e.to_string().contains("not an earlier finder export"),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("finder"));
    assert_eq!(listing(&tree), ["channels"]);
    // An empty directory is fine.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    kiln_serve::export(&cat, &empty).unwrap();
    assert!(empty.join("index.html").is_file());
}

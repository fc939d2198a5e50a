//! The finder's HTTP API against the real server and a real catalog.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn images(reply: &Reply) -> Vec<(String, String)> {
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["schema-version"], 1);
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["image"].as_str().unwrap().to_string(),
                i["version"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn images_are_found_by_suite_arch_format_and_latest() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let a = finder.addr;
    let all = images(&get(a, "/api/v1/images"));
    assert_eq!(
        all,
        pairs(&[
            ("web", "2"),
            ("db", "7"),
            ("web", "1"),
            ("tiny", "0.1"),
            (HOSTILE_NAME, HOSTILE_VERSION)
        ]),
        "newest first"
    );
    assert_eq!(
        images(&get(a, "/api/v1/images?suite=bookworm")),
        pairs(&[("db", "7")])
    );
    assert_eq!(
        images(&get(a, "/api/v1/images?arch=arm64")),
        pairs(&[("db", "7")])
    );
    assert_eq!(
        images(&get(a, "/api/v1/images?format=qcow2")),
        pairs(&[("tiny", "0.1")])
    );
    assert_eq!(
        images(&get(a, "/api/v1/images?format=oci&suite=trixie")),
        pairs(&[("web", "2")])
    );
    assert_eq!(
        images(&get(a, "/api/v1/images?suite=trixie&latest=1&format=")),
        pairs(&[
            ("web", "2"),
            ("tiny", "0.1"),
            (HOSTILE_NAME, HOSTILE_VERSION)
        ])
    );
    assert!(images(&get(a, "/api/v1/images?suite=sid")).is_empty());
    assert_eq!(
        images(&get(a, "/api/v1/images?channel=stable")),
        pairs(&[("web", "2")]),
        "only web 2 went to the stable channel"
    );
    assert!(images(&get(a, "/api/v1/images?channel=beta")).is_empty());

    // `limit`: the newest N, and how many matched (the page's first render
    // lists 100, not every version).
    let first = get(a, "/api/v1/images?limit=2");
    assert_eq!(images(&first), pairs(&[("web", "2"), ("db", "7")]));
    assert_eq!(first.json()["total"], 5);
    assert_eq!(get(a, "/api/v1/images?limit=0").status, 400);

    // Facets: what there is to search by, without the versions.
    let f = get(a, "/api/v1/facets").json();
    assert_eq!(
        f["suites"],
        serde_json::json!(["bookworm", "trixie"]),
        "{f}"
    );
    assert_eq!(
        f["architectures"],
        serde_json::json!(["amd64", "arm64"]),
        "{f}"
    );
    assert_eq!(
        f["formats"],
        serde_json::json!(["disk", "oci", "qcow2", "tar"]),
        "{f}"
    );
    assert_eq!(f["channels"], serde_json::json!(["stable"]), "{f}");
    assert_eq!(
        (f["images"].as_u64(), f["versions"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(get(a, "/api/v1/facets?suite=x").status, 400);

    // Every entry has the catalog's fields and a status slot.
    let v = get(a, "/api/v1/images?suite=trixie&format=oci").json();
    let web2 = &v["images"][0];
    for key in [
        "image",
        "version",
        "suite",
        "architectures",
        "distroless",
        "source-date-epoch",
        "manifest-sha256",
        "location",
        "recorded-at",
        "packages",
        "artifacts",
        "tests",
        "publications",
    ] {
        assert!(web2.get(key).is_some(), "no {key} in {web2}");
    }
    assert_eq!(web2["status"], Value::Null, "never watched");
    assert!(web2.as_object().unwrap().contains_key("status"));
    assert_eq!(web2["rebuild"]["outcome"], "published");
    assert_eq!(web2["rebuild"]["packages"][0]["package"], "openssl");
    let web1 = &get(a, "/api/v1/images/web").json()["versions"][1];
    assert_eq!(web1["status"]["state"], "security", "{web1}");
    assert_eq!(
        web1["status"]["summary"],
        format!("security updates pending: 1 package(s) ({WEB1_CVE})")
    );
    assert_eq!(web1["status"]["cves"], json!([WEB1_CVE]));
    assert!(web1["rebuild"].is_null());
    let kinds: Vec<_> = web2["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(kinds.contains(&"registry") && kinds.contains(&"tree"));
}

#[test]
fn package_queries_compare_versions_in_dpkg_order() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let a = finder.addr;
    let found = |q: &str| -> Vec<(String, String)> {
        let r = get(a, &format!("/api/v1/images?package={q}"));
        assert_eq!(r.status, 200, "{q}: {:?}", String::from_utf8_lossy(&r.body));
        r.json()["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let p = i["packages"].as_array().unwrap();
                assert_eq!(p.len(), 1, "{i}");
                (
                    i["image"].as_str().unwrap().to_string(),
                    p[0]["version"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    // 3.5.4-1~deb13u1 << 3.5.4-1 << 3.5.10-1 in dpkg's order (not as strings).
    assert_eq!(
        found("openssl%3C%3C3.5.4-1"),
        pairs(&[
            ("web", "3.5.4-1~deb13u1"),
            ("web", "3.5.1-1"),
            (HOSTILE_NAME, "3.0.0-1")
        ])
    );
    // Unencoded too, as curl sends it.
    assert_eq!(found("openssl>>3.5.4-1"), pairs(&[("db", "3.5.10-1")]));
    assert_eq!(
        found("openssl%20%3E%3D%203.5.4-1~deb13u1"),
        pairs(&[("web", "3.5.4-1~deb13u1"), ("db", "3.5.10-1")])
    );
    assert_eq!(found("curl=8.11.1-1"), pairs(&[("web", "8.11.1-1")]));
    assert_eq!(
        found("libc6"),
        pairs(&[("db", "2.36-9"), ("tiny", "2.41-12")])
    );
    assert!(found("nosuch").is_empty());
    let latest = get(a, "/api/v1/images?package=openssl&latest=1");
    assert_eq!(
        images(&latest),
        pairs(&[("web", "2"), ("db", "7"), (HOSTILE_NAME, HOSTILE_VERSION)])
    );
}

#[test]
fn bad_queries_are_400s_that_name_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let a = finder.addr;
    for (target, parameter, says) in [
        ("/api/v1/images?package=openssl%3C3", "package", "openssl<3"),
        (
            "/api/v1/images?package=openssl%3C%3Cnot%20a%20version",
            "package",
            "bad package query",
        ),
        (
            "/api/v1/images?architecture=amd64",
            "architecture",
            "unknown query parameter",
        ),
        ("/api/v1/images?suite=a&suite=b", "suite", "twice"),
        ("/api/v1/images?latest=perhaps", "latest", "latest=1"),
    ] {
        let r = get(a, target);
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let v = r.json();
        assert_eq!(v["parameter"], parameter, "{target}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{target}: {v}");
    }
    let r = get(a, "/api/v1/images?package=%zz");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("percent"));
}

#[test]
fn one_image_lists_all_its_versions_newest_first() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let a = finder.addr;
    let v = get(a, "/api/v1/images/web").json();
    assert_eq!(v["schema-version"], 1);
    assert_eq!(v["image"], "web");
    let versions: Vec<_> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2", "1"]);
    // A name that needs escaping in a path.
    let encoded: String = HOSTILE_NAME.bytes().map(|b| format!("%{b:02X}")).collect();
    let v = get(a, &format!("/api/v1/images/{encoded}")).json();
    assert_eq!(v["image"], HOSTILE_NAME);
    assert_eq!(v["versions"][0]["version"], HOSTILE_VERSION);

    let r = get(a, "/api/v1/images/nosuch");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nosuch"));
}

#[test]
fn the_page_other_paths_and_methods() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let a = finder.addr;
    let page = get(a, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'sha256-") && csp.contains("default-src 'none'"));
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.contains(r#"<form id="search""#) && html.contains(r#"content="api""#));
    assert_eq!(get(a, "/?image=web").status, 200);

    let head = raw(a, b"HEAD /api/v1/images HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, get(a, "/api/v1/images").body.len());

    for p in [
        "/nosuch",
        "/api/v1",
        "/api/v1/images/",
        "/index.htm",
        "/../etc/passwd",
    ] {
        assert_eq!(get(a, p).status, 404, "{p}");
    }
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let r = raw(
            a,
            format!("{m} /api/v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                .as_bytes(),
        );
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    }
}

#[test]
fn hostile_clients_get_refused_and_the_server_stays_up() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let a = finder.addr;
    // More than 8 KiB of headers.
    let mut big = b"GET /api/v1/images HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        big.extend_from_slice(format!("X-Padding-{i}: {}\r\n", "y".repeat(60)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert_eq!(raw(a, &big).status, 431);
    // One endless header line, never finished.
    let endless = [b"GET / HTTP/1.1\r\nX: ".to_vec(), vec![b'a'; 64 * 1024]].concat();
    assert_eq!(raw(a, &endless).status, 431);
    // Garbage of every kind.
    for junk in [
        &b"\x00\x01\x02\xff\xfe\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET http://evil/ HTTP/1.1\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nbroken header\r\n\r\n",
        b"\r\n\r\n",
    ] {
        let r = raw(a, junk);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(junk));
    }
    // A client that connects and says nothing, and one that goes away
    // mid-request: neither holds the server up.
    let idle = TcpStream::connect(a).unwrap();
    {
        let mut gone = TcpStream::connect(a).unwrap();
        gone.write_all(b"GET /api/v1/ima").unwrap();
    }
    let start = Instant::now();
    assert_eq!(images(&get(a, "/api/v1/images?suite=bookworm")).len(), 1);
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(idle);
}

#[test]
fn an_idle_connection_is_closed_after_the_deadline() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let mut s = TcpStream::connect(finder.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "closed after {waited:?}"
    );
    assert_eq!(parse_reply(&out).status, 408);
}

#[test]
fn new_builds_show_up_without_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let path = catalog(d.path());
    let finder = Finder::start(&path);
    assert!(images(&get(finder.addr, "/api/v1/images?suite=forky")).is_empty());
    let dir = build_dir(
        &d.path().join("more"),
        &Build {
            name: "fresh",
            version: "1",
            suite: "forky",
            arch: "amd64",
            distroless: false,
            epoch: 1_750_000_000,
            packages: &[("openssl", "3.6.0-1")],
            formats: &["tar"],
        },
    );
    kiln_catalog::Catalog::open(&path)
        .unwrap()
        .record_build(&dir)
        .unwrap();
    assert_eq!(
        images(&get(finder.addr, "/api/v1/images?suite=forky")),
        pairs(&[("fresh", "1")])
    );
}

#[test]
fn a_file_that_is_no_catalog_is_refused_before_listening() {
    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("junk.sqlite");
    std::fs::write(&junk, "not a database").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let e = kiln_serve::serve(&junk, "127.0.0.1:0", &|_| panic!("listened"), &stop).unwrap_err();
    assert!(e.to_string().contains("not a Kiln catalog"), "{e}");
    let e = kiln_serve::serve(
        &d.path().join("c.sqlite"),
        "256.0.0.1:1",
        &|_| panic!("listened"),
        &stop,
    )
    .unwrap_err();
    assert!(e.to_string().contains("256.0.0.1:1"), "{e}");
    assert!(e.hint().is_some());
}

/// The documented shape of the finder's JSON: a key added or renamed here
/// is a change for every consumer (and needs the schema document updated).
#[test]
fn the_json_shape_is_stable() {
    let d = tempfile::tempdir().unwrap();
    let finder = Finder::start(&catalog(d.path()));
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let doc = get(finder.addr, "/api/v1/images?package=openssl").json();
    assert_eq!(keys(&doc), ["images", "schema-version", "total"]);
    let facets = get(finder.addr, "/api/v1/facets").json();
    assert_eq!(
        keys(&facets),
        [
            "architectures",
            "channels",
            "formats",
            "images",
            "regions",
            "schema-version",
            "suites",
            "versions"
        ]
    );
    let web2 = &doc["images"][0];
    assert_eq!(
        keys(web2),
        [
            "architectures",
            "artifacts",
            "distroless",
            "image",
            "location",
            "manifest-sha256",
            "packages",
            "publications",
            "rebuild",
            "recorded-at",
            "rollouts",
            "source-date-epoch",
            "status",
            "suite",
            "tests",
            "version",
            "watch"
        ]
    );
    assert_eq!(
        keys(&web2["packages"][0]),
        ["architecture", "name", "version"]
    );
    assert_eq!(
        keys(&web2["rollouts"][0]),
        [
            "barrier",
            "channel",
            "complete-at",
            "duration-seconds",
            "recorded-at",
            "share",
            "since",
            "start",
            "state",
            "tree"
        ]
    );
    assert_eq!(web2["rollouts"][1]["state"], "complete");
    assert_eq!(
        keys(&web2["artifacts"][0]),
        ["architecture", "kind", "path", "sha256", "size"]
    );
    assert_eq!(
        keys(&web2["publications"][0]),
        [
            "channel",
            "digest",
            "kind",
            "location",
            "published-at",
            "region",
            "target"
        ]
    );
    let web1 = &get(finder.addr, "/api/v1/images/web").json()["versions"][1];
    assert_eq!(
        keys(&web1["tests"][0]),
        ["artifact", "at", "passed", "report", "seconds"]
    );
    let one = get(finder.addr, "/api/v1/images/web").json();
    assert_eq!(keys(&one), ["image", "schema-version", "versions"]);
    let err = get(finder.addr, "/api/v1/images?package=%3C%3C").json();
    assert_eq!(keys(&err), ["error", "hint", "parameter", "schema-version"]);
}

#[test]
fn a_replaced_catalog_file_is_reopened() {
    let d = tempfile::tempdir().unwrap();
    let path = catalog(d.path());
    let finder = Finder::start(&path);
    assert_eq!(images(&get(finder.addr, "/api/v1/images")).len(), 5);
    // Replaced by something that is no catalog: a 500 naming it, not a crash.
    let junk = d.path().join("junk");
    std::fs::write(&junk, "not a database at all").unwrap();
    std::fs::rename(&junk, &path).unwrap();
    let r = get(finder.addr, "/api/v1/images");
    assert_eq!(r.status, 500);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("not a Kiln catalog"));
    // Replaced by a new catalog with one build (an import renamed over it).
    let other = tempfile::tempdir().unwrap();
    let new = other.path().join("new.sqlite");
    let dir = build_dir(
        other.path(),
        &Build {
            name: "imported",
            version: "3",
            suite: "trixie",
            arch: "amd64",
            distroless: false,
            epoch: 1,
            packages: &[],
            formats: &["tar"],
        },
    );
    kiln_catalog::Catalog::open(&new)
        .unwrap()
        .record_build(&dir)
        .unwrap();
    std::fs::rename(&new, &path).unwrap();
    assert_eq!(
        images(&get(finder.addr, "/api/v1/images")),
        pairs(&[("imported", "3")])
    );
}

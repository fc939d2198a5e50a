//! The same catalog on SQLite and on a real PostgreSQL server: the same
//! records give the same answers, and each refuses what is not its own.

use std::path::{Path, PathBuf};

use kiln_catalog::{Catalog, PackageQuery, Publication, Query};
use kiln_testkit::postgres::Postgres;

fn build_dir(root: &Path, name: &str, epoch: i64, packages: &[(&str, &str)]) -> PathBuf {
    kiln_testkit::fake_build(root, name, epoch, packages)
}

/// Records the same history into `c` and returns every answer as JSON
/// (without the times of recording, which differ).
fn history(c: &mut Catalog, root: &Path) -> Vec<serde_json::Value> {
    let web1 = build_dir(
        root,
        "web",
        100,
        &[("openssl", "3.5.1-1"), ("curl", "8.14.1-2")],
    );
    let web2 = build_dir(
        root,
        "web",
        200,
        &[("openssl", "3.5.4-1~deb13u1"), ("curl", "8.14.1-2")],
    );
    let py = build_dir(
        root,
        "python-distroless",
        150,
        &[("openssl", "3.5.10-1"), ("python3", "3.13.5-1")],
    );
    assert!(c.record_build(&web1).unwrap());
    assert!(c.record_build(&web2).unwrap());
    assert!(c.record_build(&py).unwrap());
    assert!(!c.record_build(&web1).unwrap(), "recorded twice");
    c.record_test(&web2, "rootfs.tar", false, 3.25, Path::new("/r1.xml"))
        .unwrap();
    c.record_test(&web2, "rootfs.tar", true, 4.5, Path::new("/r2.xml"))
        .unwrap();
    let publication = |digest: &str| Publication {
        target: "docker://127.0.0.1:5000/py".into(),
        kind: "registry".into(),
        location: "127.0.0.1:5000/py@sha256:aa".into(),
        digest: Some(digest.into()),
        channel: None,
        published_at: 0,
        region: None,
    };
    c.record_publication(&py, &publication("sha256:aa"))
        .unwrap();
    c.record_publication(&py, &publication("sha256:bb"))
        .unwrap();
    let mut tree = publication("x");
    tree.kind = "tree".into();
    tree.target = "file:///srv/images".into();
    tree.location = "/srv/images/channels/stable.json".into();
    tree.channel = Some("stable".into());
    c.record_publication(&web1, &tree).unwrap();
    // web2 as an AMI in two regions.
    for (region, ami) in [("eu-west-1", "ami-0e1"), ("us-east-1", "ami-0u1")] {
        c.record_publication(
            &web2,
            &Publication {
                target: format!("aws://{region}"),
                kind: "aws".into(),
                location: ami.into(),
                digest: Some("sha256:d15c".into()),
                channel: None,
                published_at: 0,
                region: Some(region.into()),
            },
        )
        .unwrap();
    }
    // A watch pass found web1 behind; a rebuild made web2 (a first try
    // failed its test and made no catalogued version).
    let sha = |dir: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(dir.join("manifest.json")).unwrap(),
        ))
    };
    let state = |status: &str, updates: u64| kiln_catalog::WatchState {
        status: status.into(),
        updates,
        security: updates,
        cves: if updates > 0 {
            vec!["CVE-2026-1111".into()]
        } else {
            Vec::new()
        },
        detail: "[]".into(),
        checked_at: 1000,
    };
    c.record_watch(&sha(&web1), &state("up-to-date", 0))
        .unwrap();
    c.record_watch(&sha(&web1), &state("security", 1)).unwrap();
    c.record_watch(&sha(&web2), &state("up-to-date", 0))
        .unwrap();
    let rebuild = |outcome: &str, to: Option<String>, finished: i64| kiln_catalog::Rebuild {
        image: "web".into(),
        from_manifest: Some(sha(&web1)),
        to_manifest: to,
        outcome: outcome.into(),
        packages: vec![kiln_catalog::RebuildPackage {
            package: "openssl".into(),
            architecture: "amd64".into(),
            from: Some("3.5.1-1".into()),
            to: Some("3.5.4-1~deb13u1".into()),
            suite: Some("trixie-security".into()),
            security: true,
        }],
        cves: vec!["CVE-2026-1111".into()],
        release_date: Some(150),
        output: "/out/web-2".into(),
        error: None,
        started_at: finished - 10,
        finished_at: finished,
        published_at: (outcome == "published").then_some(finished),
    };
    c.record_rebuild(&rebuild("test-failed", None, 400))
        .unwrap();
    c.record_rebuild(&rebuild("published", Some(sha(&web2)), 500))
        .unwrap();
    let rebuilds = c.rebuilds(Some("web")).unwrap();
    assert_eq!(rebuilds.len(), 2);
    assert_eq!(rebuilds[0].outcome, "published", "newest first");
    assert_eq!(rebuilds[0].fix_to_publish(), Some(350));
    assert_eq!(rebuilds[1].to_manifest, None);
    assert!(c.rebuilds(Some("python-distroless")).unwrap().is_empty());
    let queries = [
        Query::default(),
        Query {
            package: Some(PackageQuery::parse("openssl<<3.5.4-1").unwrap()),
            ..Default::default()
        },
        Query {
            package: Some(PackageQuery::parse("python3").unwrap()),
            ..Default::default()
        },
        Query {
            image: Some("web".into()),
            latest: true,
            ..Default::default()
        },
        Query {
            architecture: Some("arm64".into()),
            ..Default::default()
        },
        Query {
            format: Some("tar".into()),
            suite: Some("trixie".into()),
            ..Default::default()
        },
        Query {
            channel: Some("stable".into()),
            ..Default::default()
        },
        Query {
            provider: Some("aws".into()),
            region: Some("us-east-1".into()),
            ..Default::default()
        },
        Query {
            provider: Some("aws".into()),
            region: Some("ap-south-1".into()),
            ..Default::default()
        },
    ];
    let facets = serde_json::to_value(c.facets().unwrap()).unwrap();
    assert_eq!(
        facets["channels"],
        serde_json::json!(["stable"]),
        "{facets}"
    );
    assert_eq!(
        (facets["images"].as_u64(), facets["versions"].as_u64()),
        (Some(2), Some(3))
    );
    queries
        .iter()
        .map(|q| {
            let mut v = serde_json::to_value(c.find(q).unwrap()).unwrap();
            for image in v.as_array_mut().unwrap() {
                let o = image.as_object_mut().unwrap();
                o.remove("recorded-at");
                o.remove("location");
                for t in o["tests"].as_array_mut().unwrap() {
                    t.as_object_mut().unwrap().remove("at");
                }
                for p in o["publications"].as_array_mut().unwrap() {
                    p.as_object_mut().unwrap().remove("published-at");
                }
            }
            v
        })
        .chain(std::iter::once(facets))
        .collect()
}

#[test]
fn postgres_gives_the_same_answers_as_sqlite() {
    let pg = Postgres::start();
    let url = pg.database("kiln_same");
    let d = tempfile::tempdir().unwrap();
    let mut lite = Catalog::open(&d.path().join("catalog.sqlite")).unwrap();
    let mut server = Catalog::open(Path::new(&url)).unwrap();
    assert_eq!((lite.backend(), server.backend()), ("sqlite", "postgres"));
    assert!(
        !server.path().display().to_string().contains("kiln:kiln@"),
        "the password is shown"
    );
    let a = history(&mut lite, &d.path().join("a"));
    let b = history(&mut server, &d.path().join("b"));
    assert_eq!(a, b);
    // And the answers are the right ones.
    let old_openssl: Vec<&str> = a[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["packages"][0]["version"].as_str().unwrap())
        .collect();
    assert_eq!(
        old_openssl,
        ["3.5.4-1~deb13u1", "3.5.1-1"],
        "dpkg order, newest build first"
    );
    assert_eq!(a[2][0]["image"], "python-distroless");
    assert_eq!(a[2][0]["publications"].as_array().unwrap().len(), 1);
    assert_eq!(a[2][0]["publications"][0]["digest"], "sha256:bb");
    assert_eq!(a[3].as_array().unwrap().len(), 1);
    assert_eq!(a[3][0]["tests"][0]["passed"], true, "newest run first");
    assert_eq!(a[3][0]["tests"][1]["seconds"], 3.25);
    assert!(a[4].as_array().unwrap().is_empty());
    // The watch's last finding per version, and the rebuild that made web2.
    let web = a[0].as_array().unwrap();
    let (web2, web1) = (&web[0], &web[2]);
    assert_eq!(web1["watch"]["status"], "security", "the last pass wins");
    assert_eq!(web1["watch"]["cves"], serde_json::json!(["CVE-2026-1111"]));
    assert!(web1["rebuild"].is_null());
    assert_eq!(web2["watch"]["status"], "up-to-date");
    assert_eq!(web2["rebuild"]["outcome"], "published");
    assert_eq!(web2["rebuild"]["packages"][0]["suite"], "trixie-security");
    assert!(a[2][0]["watch"].is_null(), "never watched");
    // The AMI of a region.
    assert_eq!(a[7].as_array().unwrap().len(), 1, "{}", a[7]);
    let amis: Vec<(&str, &str)> = a[7][0]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "aws")
        .map(|p| {
            (
                p["region"].as_str().unwrap(),
                p["location"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        amis.contains(&("us-east-1", "ami-0u1")) && amis.len() == 2,
        "{amis:?}"
    );
    assert!(
        a[8].as_array().unwrap().is_empty(),
        "no image in ap-south-1"
    );
    // Reopening migrates nothing and keeps everything.
    drop(server);
    let again = Catalog::open(Path::new(&url)).unwrap();
    assert_eq!(again.find(&Query::default()).unwrap().len(), 3);
}

#[test]
fn postgres_refuses_a_foreign_database_and_a_newer_schema_and_leaves_them() {
    let pg = Postgres::start();
    let foreign = pg.database("kiln_foreign");
    {
        let mut c = postgres::Client::connect(&foreign, postgres::NoTls).unwrap();
        c.batch_execute("CREATE TABLE customers (id int); INSERT INTO customers VALUES (7)")
            .unwrap();
    }
    let e = Catalog::open(Path::new(&foreign)).err().unwrap();
    assert!(e.to_string().contains("not a Kiln catalog"), "{e}");
    let mut c = postgres::Client::connect(&foreign, postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM customers", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "Kiln created tables in a foreign database");

    let newer = pg.database("kiln_newer");
    drop(Catalog::open(Path::new(&newer)).unwrap());
    let mut c = postgres::Client::connect(&newer, postgres::NoTls).unwrap();
    c.batch_execute("UPDATE kiln_catalog SET value = '99' WHERE key = 'schema-version'")
        .unwrap();
    let e = Catalog::open(Path::new(&newer)).err().unwrap();
    assert!(e.to_string().contains("schema version 99, newer"), "{e}");
    // A server that is not there, and a wrong password: named, with a hint.
    let gone = format!("postgres://kiln:kiln@127.0.0.1:{}/x", pg.port + 1);
    let e = Catalog::open(Path::new(&gone)).err().unwrap();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(e
        .hint()
        .unwrap()
        .contains("postgres://USER:PASSWORD@HOST:PORT/DATABASE"));
    let wrong = newer.replace("kiln:kiln@", "kiln:wrong@");
    let e = Catalog::open(Path::new(&wrong)).err().unwrap();
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("wrong"),
        "the password is in the message: {e}"
    );
}

#[test]
fn postgres_writers_do_not_interleave() {
    let pg = Postgres::start();
    let url = pg.database("kiln_writers");
    let d = tempfile::tempdir().unwrap();
    drop(Catalog::open(Path::new(&url)).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let url = url.clone();
            let root = d.path().join(format!("t{t}"));
            std::thread::spawn(move || {
                let mut c = Catalog::open(Path::new(&url)).unwrap();
                for i in 0..5 {
                    let pkgs: Vec<(String, String)> = (0..50)
                        .map(|k| (format!("p{k}"), format!("{t}.{i}")))
                        .collect();
                    let refs: Vec<(&str, &str)> =
                        pkgs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                    let dir = build_dir(&root, &format!("img{t}"), i, &refs);
                    assert!(c.record_build(&dir).unwrap());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = Catalog::open(Path::new(&url)).unwrap();
    let all = c.find(&Query::default()).unwrap();
    assert_eq!(all.len(), 20);
    let p7 = c
        .find(&Query {
            package: Some(PackageQuery::parse("p7>=2.0").unwrap()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p7.len(), 10, "images of threads 2 and 3");
}

//! The finder page in a real headless Chromium: served by the finder, and
//! exported and served as static files.

mod common;

#[path = "common/browser.rs"]
mod browser;

use browser::{png_colours, Chromium, Tab};
use common::*;
use serde_json::{json, Value};

/// (image, version, matching package versions) of each `.result` under `root`.
const RESULTS: &str = "(root) => [...document.querySelectorAll(root + ' .result')].map(r => [\
    r.querySelector('.image-link').textContent, r.querySelector('.version').textContent, \
    [...r.querySelectorAll('.pkg-version')].map(x => x.textContent)])";

fn results(tab: &mut Tab, root: &str) -> Value {
    tab.eval(&format!(
        "({RESULTS})({})",
        serde_json::to_string(root).unwrap()
    ))
}

/// The same triples from an API answer.
fn api_results(v: &Value) -> Value {
    Value::Array(
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let p: Vec<_> = i["packages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["version"].clone())
                    .collect();
                json!([i["image"], i["version"], p])
            })
            .collect(),
    )
}

fn search(tab: &mut Tab, package: &str) {
    tab.type_into("#package", package);
    tab.press_enter();
    let shipping = serde_json::to_string(&format!("shipping {package}")).unwrap();
    tab.wait_for(
        &format!(
            "document.body.dataset.state === 'results' && \
             document.getElementById('summary').textContent.includes({shipping})"
        ),
        &format!("the results for {package}"),
    );
}

fn expected_openssl_below_3_5_4() -> Value {
    json!([
        ["web", "2", ["3.5.4-1~deb13u1"]],
        ["web", "1", ["3.5.1-1"]],
        [HOSTILE_NAME, HOSTILE_VERSION, ["3.0.0-1"]]
    ])
}

/// What both modes must do: search by package, open an image, show the
/// hostile strings as text.
fn search_and_open_an_image(tab: &mut Tab, mode: &str) {
    tab.wait_for(
        "document.body.dataset.state === 'results'",
        "the first listing",
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('#results .result').length"),
        5,
        "{mode}: every image version listed at first"
    );
    search(tab, "openssl<<3.5.4-1");
    assert_eq!(
        results(tab, "#results"),
        expected_openssl_below_3_5_4(),
        "{mode}"
    );
    assert_eq!(
        tab.eval("location.hash"),
        "#package=openssl%3C%3C3.5.4-1",
        "{mode}: the search is linkable"
    );
    // Catalog strings are text: nothing of them became markup or ran.
    assert_eq!(tab.eval("typeof window.__pwned"), "undefined", "{mode}");
    assert_eq!(
        tab.eval("document.querySelectorAll('main script, main img').length"),
        0,
        "{mode}: a catalog string became markup"
    );
    // What each result says.
    let web1 = tab.eval(
        "(() => { const r = document.querySelectorAll('#results .result')[1]; return {\
         date: r.querySelector('.date').textContent, test: r.querySelector('.test').textContent,\
         status: r.querySelector('.status').textContent,\
         sha: [...r.querySelectorAll('td.sha256')].map(x => x.textContent),\
         refs: [...r.querySelectorAll('.publication.registry .ref')].map(x => x.value)}; })()",
    );
    assert_eq!(web1["date"], "2025-01-01", "{mode}: {web1}");
    assert_eq!(web1["test"], "tests passed", "{mode}");
    assert_eq!(
        web1["status"],
        format!("security updates pending: 1 package(s) ({WEB1_CVE})"),
        "{mode}"
    );
    // The version the watch rebuilt says why, and how fast.
    let reason = tab.eval(
        "document.querySelectorAll('#results .result')[0].querySelector('.rebuild-reason').textContent",
    );
    assert_eq!(
        reason,
        format!(
            "Rebuilt by the security watch: openssl 3.5.1-1 \u{2192} 3.5.4-1~deb13u1 (security); \
             fixes {WEB1_CVE}; published 3.0 h after the fix's Release"
        ),
        "{mode}"
    );
    // Its staged rollout, per channel.
    assert_eq!(
        tab.eval(
            "document.querySelectorAll('#results .result')[0].querySelector('.rollout').textContent"
        ),
        "Rollout: beta: paused at 25%; stable: every machine (barrier)",
        "{mode}"
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('#results .result')[1].querySelector('.rebuild-reason') === null"),
        true,
        "{mode}: web 1 was built by hand"
    );
    assert_eq!(web1["sha"], json!(["a".repeat(64)]), "{mode}");
    assert_eq!(
        web1["refs"],
        json!([format!(
            "registry.example:5000/web:1@sha256:{}",
            "a".repeat(64)
        )]),
        "{mode}"
    );

    tab.click("#results .result .image-link");
    tab.wait_for(
        "document.body.dataset.state === 'detail' && location.hash === '#image=web'",
        "the detail view of web",
    );
    assert_eq!(tab.eval("document.getElementById('list').hidden"), true);
    assert_eq!(
        tab.eval("document.getElementById('detail-name').textContent"),
        "web"
    );
    assert_eq!(
        results(tab, "#detail"),
        json!([["web", "2", []], ["web", "1", []]]),
        "{mode}: all versions, newest first"
    );
    let refs = tab.eval(
        "[...document.querySelectorAll('#detail .publication.registry .ref')].map(x => x.value)",
    );
    assert_eq!(
        refs[0],
        format!("registry.example:5000/web@{WEB_V2_DIGEST}"),
        "{mode}: {refs}"
    );
    assert_eq!(
        tab.eval("document.querySelector('#detail .publication.tree .ref').value"),
        "/srv/images/channels/stable.json"
    );
    tab.click("#detail .publication.registry .copy");
    tab.wait_for(
        "document.querySelector('#detail .publication.registry .copy').textContent === 'Copied'",
        "the copy button to confirm",
    );

    // The hostile image's own view, by its link.
    tab.eval("history.back(); true");
    tab.wait_for(
        "document.body.dataset.state === 'results' && document.querySelectorAll('#results .result').length === 3",
        "the search again after going back",
    );
    tab.click("#results .result:nth-child(3) .image-link");
    tab.wait_for(
        "document.body.dataset.state === 'detail'",
        "the hostile image's view",
    );
    assert_eq!(
        tab.eval("document.getElementById('detail-name').textContent"),
        HOSTILE_NAME
    );
    assert_eq!(tab.eval("typeof window.__pwned"), "undefined");

    // A bad query is said, not swallowed.
    tab.eval("location.hash = ''; true");
    tab.wait_for("document.body.dataset.state === 'results'", "the listing");
    tab.type_into("#package", "openssl<3");
    tab.press_enter();
    tab.wait_for(
        "document.body.dataset.state === 'error'",
        "the error for a bad query",
    );
    let error = tab.eval("document.getElementById('error').textContent");
    assert!(
        error
            .as_str()
            .unwrap()
            .contains("bad package query `openssl<3`"),
        "{mode}: {error}"
    );
    assert_eq!(tab.eval("document.getElementById('error').hidden"), false);

    // The AMI for a region: the image published there, and only that
    // region's id, ready to copy.
    tab.eval("location.hash = '#provider=aws&region=us-east-1'; true");
    tab.wait_for(
        "document.body.dataset.state === 'results' && document.querySelectorAll('#results .result').length === 1",
        "the search for an AMI in us-east-1",
    );
    assert_eq!(
        results(tab, "#results"),
        json!([["web", "1", []]]),
        "{mode}"
    );
    let amis = tab.eval(
        "[...document.querySelectorAll('#results .publication.cloud')].map(c => [c.querySelector('.kind').textContent, c.querySelector('.ref').value])",
    );
    assert_eq!(amis, json!([["AMI us-east-1", WEB1_AMI_US]]), "{mode}");
    assert_eq!(
        tab.eval("document.getElementById('region').value"),
        "us-east-1",
        "{mode}"
    );
    tab.eval("location.hash = '#region=ap-south-1'; true");
    tab.wait_for(
        "document.body.dataset.state === 'results' && document.querySelectorAll('#results .result').length === 0",
        "no image in ap-south-1",
    );
}

#[test]
fn the_finder_page_works_served_and_exported() {
    let d = tempfile::tempdir().unwrap();
    let cat = catalog(d.path());
    let finder = Finder::start(&cat);
    let chromium = Chromium::launch();

    // Served by the finder, asking the API.
    let mut tab = chromium.tab();
    tab.navigate(&format!("{}/", finder.url()));
    search_and_open_an_image(&mut tab, "served");
    // A screenshot of real results, not a blank page.
    tab.eval("location.hash = '#package=openssl'; true");
    tab.wait_for(
        "document.body.dataset.state === 'results' && document.querySelectorAll('#results .result').length === 4",
        "the openssl results",
    );
    let shot = tab.screenshot();
    let (w, h, colours) = png_colours(&shot);
    assert!(w >= 800 && h >= 600, "screenshot is {w}x{h}");
    assert!(colours > 16, "the screenshot has {colours} colours: blank?");
    if let Some(path) = std::env::var_os("KILN_FINDER_SCREENSHOT") {
        std::fs::write(path, &shot).unwrap();
    }

    // `?image=NAME` links open the image's view.
    tab.navigate(&format!("{}/?image=db", finder.url()));
    tab.wait_for(
        "document.body.dataset.state === 'detail' && location.hash === '#image=db'",
        "the db view from ?image=db",
    );
    assert_eq!(results(&mut tab, "#detail"), json!([["db", "7", []]]));
    assert!(
        tab.cdp.problems.is_empty(),
        "served page: {:?}",
        tab.cdp.problems
    );

    // Exported, beside a download tree on a plain static server.
    let www = d.path().join("www");
    std::fs::create_dir_all(www.join("channels")).unwrap();
    kiln_serve::export(&cat, &www.join("finder")).unwrap();
    let files = StaticServer::start(&www);
    let mut tab = chromium.tab();
    tab.navigate(&format!("{}/finder/", files.url()));
    assert_eq!(
        tab.eval("document.querySelector('meta[name=kiln-finder-mode]').content"),
        "static"
    );
    search_and_open_an_image(&mut tab, "exported");
    // The page filters as the API does.
    for query in [
        "package=openssl%3E%3E3.5.4-1",
        "package=openssl%20%3E%3D%203.5.4-1~deb13u1",
        "package=libc6&latest=1",
        "package=curl%3D8.11.1-1",
        "format=oci",
        "arch=arm64",
        "suite=trixie&latest=1",
        "format=qcow2&suite=trixie",
        "package=nosuch",
    ] {
        tab.eval(&format!(
            "location.hash = {}; true",
            serde_json::to_string(query).unwrap()
        ));
        tab.wait_for(
            &format!(
                "document.body.dataset.state === 'results' && location.hash === {}",
                serde_json::to_string(&format!("#{query}")).unwrap()
            ),
            query,
        );
        // The hashchange may not have run yet: wait for a settled search.
        std::thread::sleep(std::time::Duration::from_millis(200));
        tab.wait_for("document.body.dataset.state === 'results'", query);
        let want = api_results(&get(finder.addr, &format!("/api/v1/images?{query}")).json());
        assert_eq!(
            results(&mut tab, "#results"),
            want,
            "exported page, {query}"
        );
    }
    assert!(
        tab.cdp.problems.is_empty(),
        "exported page: {:?}",
        tab.cdp.problems
    );
    drop(chromium);
}

/// A catalog of 130 versions: the first render lists the newest 100 (not
/// every version), "Show more" lists the rest, and the suggestions come
/// from the facets.
#[test]
fn many_versions_are_listed_100_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("catalog.sqlite");
    let mut c = kiln_catalog::Catalog::open(&path).unwrap();
    let builds = d.path().join("builds");
    for n in 0..130 {
        let version = n.to_string();
        let dir = build_dir(
            &builds,
            &Build {
                name: "daily",
                version: &version,
                suite: "forky",
                arch: if n % 2 == 0 { "amd64" } else { "riscv64" },
                distroless: false,
                epoch: 1_700_000_000 + n * 86_400,
                packages: &[("openssl", "3.5.4-1")],
                formats: &["tar"],
            },
        );
        assert!(c.record_build(&dir).unwrap());
    }
    drop(c);
    let chromium = Chromium::launch();
    let finder = Finder::start(&path);
    let www = d.path().join("www");
    kiln_serve::export(&path, &www.join("finder")).unwrap();
    let files = StaticServer::start(&www);
    for (mode, url) in [
        ("served", format!("{}/", finder.url())),
        ("exported", format!("{}/finder/", files.url())),
    ] {
        let mut tab = chromium.tab();
        tab.navigate(&url);
        tab.wait_for(
            "document.body.dataset.state === 'results'",
            "the first listing",
        );
        let cards = "document.querySelectorAll('#results .result').length";
        assert_eq!(tab.eval(cards), 100, "{mode}: the first render lists 100");
        let first = results(&mut tab, "#results");
        assert_eq!(
            first[0],
            json!(["daily", "129", []]),
            "{mode}: newest first"
        );
        assert!(
            tab.eval("document.getElementById('summary').textContent")
                .as_str()
                .unwrap()
                .contains("The newest 100 of 130 image versions"),
            "{mode}"
        );
        tab.click("#more");
        tab.wait_for(
            &format!("document.body.dataset.state === 'results' && {cards} === 130"),
            "all 130 after Show more",
        );
        assert_eq!(tab.eval("document.getElementById('more').hidden"), true);
        // Suggestions from the facets.
        tab.wait_for(
            "document.querySelectorAll('#archs option').length === 2",
            "the architecture suggestions",
        );
        assert_eq!(
            tab.eval("[...document.querySelectorAll('#archs option')].map(o => o.value)"),
            json!(["amd64", "riscv64"]),
            "{mode}"
        );
        assert_eq!(
            tab.eval("[...document.querySelectorAll('#suites option')].map(o => o.value)"),
            json!(["forky"]),
            "{mode}"
        );
        assert!(
            tab.cdp.problems.is_empty(),
            "{mode}: {:?}",
            tab.cdp.problems
        );
    }
}

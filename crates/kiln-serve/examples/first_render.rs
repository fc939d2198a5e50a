//! For bench/finder.sh: how long each finder page takes from navigation to
//! its first results painted (the page's `kiln-first-results` mark), in a
//! real headless Chromium.
//!
//!   first_render RUNS URL...
//!
//! Prints one line per URL: the median milliseconds over RUNS loads.

#[path = "../tests/common/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .and_then(|r| r.parse().ok())
        .expect("usage: first_render RUNS URL...");
    let urls: Vec<String> = args.collect();
    let chromium = browser::Chromium::launch();
    let mut tab = chromium.tab();
    for url in &urls {
        let mut times = Vec::new();
        for _ in 0..runs {
            tab.navigate("about:blank");
            tab.navigate(url);
            let start = Instant::now();
            let ms = loop {
                let v = tab.eval(
                    "(performance.getEntriesByName('kiln-first-results')[0] || {}).startTime || null",
                );
                if let Some(ms) = v.as_f64() {
                    break ms;
                }
                assert!(
                    start.elapsed() < browser::WAIT,
                    "{url}: no results within {:?}",
                    browser::WAIT
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            times.push(ms);
        }
        times.sort_by(f64::total_cmp);
        println!("{:.0} {url}", times[times.len() / 2]);
    }
}

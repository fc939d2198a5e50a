//! Times parsing a `Packages` index: `cargo run --release --example parse_index FILE`.
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: parse_index PACKAGES-FILE");
    let text = std::fs::read_to_string(&path).expect("readable UTF-8 file");
    let mut best = f64::MAX;
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        count = 0;
        let mut versions = 0usize;
        for p in kiln_deb::deb822::paragraphs(&text) {
            let p = p.expect("valid index");
            versions += p.get("Version").map_or(0, |v| v.len());
            count += 1;
        }
        std::hint::black_box(versions);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{count} paragraphs, {:.1} MB: best of 5 {:.3}s ({:.0} MB/s)",
        text.len() as f64 / 1e6,
        best,
        text.len() as f64 / 1e6 / best
    );
}

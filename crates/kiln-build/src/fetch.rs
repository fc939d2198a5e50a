//! The lock's `.deb`s into the cache (verified by sha256), with progress.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use kiln_archive::debs::{fetch_debs, DebEvent, DebRef};
use kiln_archive::Fetcher;
use kiln_model::event::Stage;
use kiln_model::{Cancel, Cancelled, Event, Hinted, Reporter};
use kiln_recipe::{Lock, LockedPackage};

use crate::sources::SourceOptions;

/// The download URL of a locked package.
pub fn deb_ref(lock: &Lock, p: &LockedPackage) -> Result<DebRef> {
    let rel = lock
        .releases
        .iter()
        .find(|r| r.suite == p.release)
        .ok_or_else(|| {
            Hinted::new(
                format!(
                    "the lock names release `{}` for {} but has no such [[release]]",
                    p.release, p.name
                ),
                "the lock is damaged; run `kiln lock RECIPE` again",
            )
        })?;
    Ok(DebRef {
        label: format!("{} {} {}", p.name, p.version, p.architecture),
        url: format!("{}/{}", rel.uri, p.filename),
        sha256: p.sha256.clone(),
        size: p.size,
    })
}

/// Fetches the `.deb`s of `packages`; returns their cache paths in order.
pub fn fetch_packages(
    lock: &Lock,
    packages: &[&LockedPackage],
    args: &SourceOptions,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<Vec<PathBuf>> {
    cancel.check()?;
    let refs: Vec<DebRef> = packages
        .iter()
        .map(|p| deb_ref(lock, p))
        .collect::<Result<_>>()?;
    let total_bytes: u64 = refs.iter().map(|r| r.size).sum();
    let done = AtomicUsize::new(0);
    let done_bytes = AtomicU64::new(0);
    let downloaded = AtomicU64::new(0);
    let start = Instant::now();
    let order = Mutex::new(());
    let report = |d: &DebRef, ev: DebEvent| {
        let _g = order.lock().unwrap();
        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
        let b = done_bytes.fetch_add(d.size, Ordering::SeqCst) + d.size;
        if ev != DebEvent::Cached {
            downloaded.fetch_add(d.size, Ordering::SeqCst);
        }
        if ev == DebEvent::Repaired {
            reporter.warn(&format!(
                "cached {} was corrupt; downloaded it again",
                d.label
            ));
        }
        reporter.report(Event::Download {
            done: n,
            total: refs.len(),
            bytes: b,
            total_bytes,
            package: d.label.clone(),
            cached: ev == DebEvent::Cached,
        });
    };
    let jobs = std::env::var("KILN_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let paths = fetch_debs(
        &refs,
        &args.cache(),
        &Fetcher::new(),
        jobs,
        args.offline,
        &report,
    )?;
    if cancel.is_cancelled() {
        return Err(Cancelled.into());
    }
    let dl = downloaded.load(Ordering::SeqCst);
    reporter.step(
        Stage::Fetch,
        &format!(
            "{} packages ({}, {} downloaded) in {:.2}s",
            refs.len(),
            human_size(total_bytes),
            human_size(dl),
            start.elapsed().as_secs_f64()
        ),
    );
    Ok(paths)
}

pub use kiln_model::human_size;

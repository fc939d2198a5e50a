//! `kiln fetch`: the lock's `.deb`s into the cache, with progress.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use kiln_archive::debs::{fetch_debs, DebEvent, DebRef};
use kiln_archive::Fetcher;
use kiln_recipe::{Lock, LockedPackage};

use crate::lock::{cache_for, Hinted};
use crate::ui::{human_size, Ui};
use crate::SourceArgs;

/// The download URL of a locked package.
pub fn deb_ref(lock: &Lock, p: &LockedPackage) -> Result<DebRef> {
    let rel = lock
        .releases
        .iter()
        .find(|r| r.suite == p.release)
        .ok_or_else(|| Hinted {
            message: format!(
                "the lock names release `{}` for {} but has no such [[release]]",
                p.release, p.name
            ),
            hint: "the lock is damaged; run `kiln lock RECIPE` again".into(),
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
    ui: &Ui,
    lock: &Lock,
    packages: &[&LockedPackage],
    args: &SourceArgs,
) -> Result<Vec<PathBuf>> {
    let refs: Vec<DebRef> = packages
        .iter()
        .map(|p| deb_ref(lock, p))
        .collect::<Result<_>>()?;
    let total_bytes: u64 = refs.iter().map(|r| r.size).sum();
    let done = AtomicUsize::new(0);
    let done_bytes = AtomicU64::new(0);
    let downloaded = AtomicU64::new(0);
    let start = Instant::now();
    let line = Mutex::new(());
    let report = |d: &DebRef, ev: DebEvent| {
        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
        let b = done_bytes.fetch_add(d.size, Ordering::SeqCst) + d.size;
        if ev != DebEvent::Cached {
            downloaded.fetch_add(d.size, Ordering::SeqCst);
        }
        let _g = line.lock().unwrap();
        if ev == DebEvent::Repaired {
            ui.clear_progress();
            ui.warn(&format!(
                "cached {} was corrupt; downloaded it again",
                d.label
            ));
        }
        if ui.progress_bars() {
            ui.progress(
                "Fetching",
                n,
                refs.len(),
                &format!("{} / {}", human_size(b), human_size(total_bytes)),
            );
        } else if ev != DebEvent::Cached {
            ui.status("Fetched", &format!("{} ({})", d.label, human_size(d.size)));
        }
    };
    let jobs = std::env::var("KILN_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let result = fetch_debs(
        &refs,
        &cache_for(args),
        &Fetcher::new(),
        jobs,
        args.offline,
        &report,
    );
    ui.clear_progress();
    let paths = result?;
    let dl = downloaded.load(Ordering::SeqCst);
    ui.status(
        "Fetched",
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

pub fn cmd_fetch(ui: &Ui, recipe_path: &Path, locked: bool, args: &SourceArgs) -> Result<()> {
    let (_, lock) = crate::lock::ensure_lock(ui, recipe_path, locked, args)?;
    let pkgs: Vec<&LockedPackage> = lock.packages.iter().collect();
    fetch_packages(ui, &lock, &pkgs, args)?;
    Ok(())
}

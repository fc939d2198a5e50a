//! `kiln watch`: which images have fallen behind their suites.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use kiln_model::Cancel;
use kiln_watch::{ImageReport, Report, Status, Target, Tracker, WatchOptions};

use crate::rebuild::RebuildOptions;

use crate::ui::Ui;
use crate::SourceArgs;

#[derive(Args)]
pub struct WatchArgs {
    /// Recipes, locks or build output directories to check (default: the newest version of every image in the catalog).
    pub targets: Vec<PathBuf>,
    /// The Debian security tracker's JSON (a file, or an http(s):// URL of its data/json), for CVE ids, urgencies and issues with no fix yet.
    #[arg(long, value_name = "FILE|URL")]
    pub security_tracker: Option<String>,
    /// The tracker's list of DSAs or DLAs (data/DSA/list, data/DLA/list; a file or URL; repeatable), to name the advisories each update brings.
    #[arg(
        long = "advisories",
        value_name = "FILE|URL",
        requires = "security_tracker"
    )]
    pub advisories: Vec<String>,
    /// Keep running: one pass every DURATION (90s, 30m, 6h, 1d); see docs/watch.md for a systemd timer instead.
    #[arg(long, value_name = "DURATION", value_parser = parse_every)]
    pub every: Option<Duration>,
    /// Print the report as JSON on stdout (schema: docs/schemas/watch.schema.json).
    #[arg(long)]
    pub json: bool,
    /// Rebuild what is behind: re-lock with --update of the fixed packages, build, test (when the recipe has tests), publish to its [[publish]] targets, record why in the catalog. `security` (the default) acts on security updates only, `updates` on every update.
    #[arg(long, value_name = "WHAT", num_args = 0..=1, default_missing_value = "security")]
    pub rebuild: Option<crate::rebuild::RebuildOn>,
    /// Ed25519 private key (PKCS#8 PEM) for rebuilds: signs their provenance and download-tree channel documents.
    #[arg(
        long,
        value_name = "KEY.pem",
        env = "KILN_SIGN_KEY",
        requires = "rebuild"
    )]
    pub sign_key: Option<PathBuf>,
    /// Plain HTTP to registries rebuilds publish to (for registries on loopback).
    #[arg(long, requires = "rebuild")]
    pub insecure: bool,
    /// Registry user for rebuilds' publications (password from $KILN_REGISTRY_PASSWORD).
    #[arg(long, requires = "rebuild")]
    pub username: Option<String>,
    /// Seconds a rebuilt disk image's boot test may take.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 900,
        requires = "rebuild"
    )]
    pub test_timeout: u64,
    #[command(flatten)]
    pub sources: SourceArgs,
}

fn parse_every(s: &str) -> Result<Duration, String> {
    kiln_watch::parse_duration(s).ok_or_else(|| {
        format!("{s:?} is no duration: write a whole number with s, m, h or d (30m, 6h)")
    })
}

/// Runs one pass (or one every `--every`) and gives the exit status:
/// 0 nothing to do, 1 updates, 2 security updates, 3 an image could not
/// be checked or the watch failed, 4 a rebuild failed. With `--rebuild`,
/// an image rebuilt and published counts as done.
pub fn cmd_watch(ui: &Ui, catalog: Option<&Path>, cancel: &Cancel, a: &WatchArgs) -> u8 {
    loop {
        let code = match pass(ui, catalog, cancel, a) {
            Ok(code) => code,
            Err(e) => {
                crate::ui::report_error(ui, &e);
                // What the command line got wrong stays wrong: no next pass.
                if e.downcast_ref::<crate::cmd::Usage>().is_some() {
                    return crate::EX_USAGE;
                }
                kiln_watch::EXIT_UNKNOWN
            }
        };
        let Some(every) = a.every else {
            return code;
        };
        ui.status(
            "Waiting",
            &format!("{} until the next pass", humantime(every)),
        );
        std::thread::sleep(every);
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn pass(ui: &Ui, catalog: Option<&Path>, cancel: &Cancel, a: &WatchArgs) -> Result<u8> {
    let reporter = crate::ui::reporter(ui, false);
    let _lock = kiln_watch::WatchLock::acquire(&kiln_watch::state_dir(), reporter.as_ref())?;
    let mut warnings = Vec::new();
    let mut warn = |w: String| {
        ui.warn(&w);
        warnings.push(w);
    };
    let mut tracker = match &a.security_tracker {
        None => None,
        Some(loc) => match Tracker::load(loc) {
            Ok(t) => Some(t),
            Err(e) => {
                warn(format!("{e}; {}", e.hint()));
                None
            }
        },
    };
    if let Some(t) = &mut tracker {
        for loc in &a.advisories {
            if let Err(e) = t.load_advisories(loc) {
                warn(format!("{e}; the watch goes on without its advisory ids"));
            }
        }
    }
    let mut failed: Vec<ImageReport> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    if a.targets.is_empty() {
        let path = crate::catalog::location(catalog).ok_or_else(|| {
            kiln_model::Hinted::new(
                "--catalog none: there is no catalog to take the images from",
                "name the recipes, locks or build directories to check",
            )
        })?;
        let c = kiln_catalog::Catalog::open_read_only(&path)?;
        // Each image's newest version, passing over versions a rebuild
        // made but could not test or publish: they are not current.
        let found = c.find(&kiln_catalog::Query::default())?;
        let mut seen = std::collections::HashSet::new();
        for f in found {
            if f.rebuild.as_ref().is_some_and(|r| !r.succeeded()) || !seen.insert(f.image.clone()) {
                continue;
            }
            match Target::from_path(Path::new(&f.location)) {
                Ok(t) => targets.push(t),
                Err(e) => failed.push(ImageReport::unknown(
                    &f.image,
                    f.version.clone(),
                    &f.location,
                    format!("recorded in the catalog, but {e:#}"),
                )),
            }
        }
        if targets.is_empty() && failed.is_empty() {
            ui.warn(&format!(
                "the catalog {} has no images; build some, or name recipes, locks or build directories",
                c.path().display()
            ));
        }
    } else {
        for p in &a.targets {
            targets.push(Target::from_path(p)?);
        }
    }
    let rebuild = a.rebuild.map(|on| RebuildOptions {
        on,
        sign_key: a.sign_key.as_deref(),
        insecure: a.insecure,
        username: a.username.clone(),
        sources: a.sources.options(),
        test_timeout: a.test_timeout,
    });
    if let Some(o) = &rebuild {
        crate::rebuild::check_before(&targets, o)?;
    }
    let mut report = kiln_watch::watch(
        &targets,
        &WatchOptions {
            sources: a.sources.options(),
            tracker: tracker.as_ref(),
            now: kiln_archive::now(),
        },
        reporter.as_ref(),
    );
    report.warnings.extend(warnings);
    report.images.extend(failed);
    record_states(ui, catalog, &report);
    let rebuilds = match &rebuild {
        Some(o) => crate::rebuild::rebuild_all(
            ui,
            catalog,
            reporter.as_ref(),
            cancel,
            &targets,
            &report.images,
            o,
        ),
        None => Vec::new(),
    };
    let code = if rebuilds.iter().any(|(_, r)| !r.succeeded()) {
        crate::rebuild::EXIT_REBUILD_FAILED
    } else {
        // What is left to do: images rebuilt are done.
        let done: std::collections::HashSet<&str> =
            rebuilds.iter().map(|(at, _)| at.as_str()).collect();
        kiln_watch::exit_code_of(
            report
                .images
                .iter()
                .filter(|i| !done.contains(i.location.as_str())),
        )
    };
    let rebuilds: Vec<&kiln_catalog::Rebuild> = rebuilds.iter().map(|(_, r)| r).collect();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if a.rebuild.is_some() {
            v["rebuilds"] = serde_json::to_value(&rebuilds)?;
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_table(&report);
        for r in &rebuilds {
            outln!(
                "rebuilt {}: {}{}{}",
                r.image,
                r.outcome,
                if r.output.is_empty() {
                    String::new()
                } else {
                    format!(" -> {}", r.output)
                },
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(code)
}

/// Each checked version's finding, into the catalog (when there is one),
/// for the finder and the next `kiln find`.
fn record_states(ui: &Ui, catalog: Option<&Path>, report: &Report) {
    let mut by: std::collections::BTreeMap<&str, Vec<&ImageReport>> = Default::default();
    for i in &report.images {
        if let Some(sha) = &i.manifest_sha256 {
            by.entry(sha).or_default().push(i);
        }
    }
    let Some(path) = crate::catalog::location(catalog) else {
        return;
    };
    if by.is_empty() || !(kiln_catalog::is_url(&path) || path.exists()) {
        return;
    }
    let r = kiln_catalog::Catalog::open(&path).and_then(|mut c| {
        for (sha, reports) in &by {
            let updates = reports.iter().flat_map(|i| &i.updates);
            let cves: std::collections::BTreeSet<String> = updates
                .clone()
                .flat_map(|u| u.cves.iter().cloned())
                .collect();
            c.record_watch(
                sha,
                &kiln_catalog::WatchState {
                    status: reports
                        .iter()
                        .map(|i| i.status)
                        .max()
                        .unwrap_or(Status::Unknown)
                        .name()
                        .to_string(),
                    updates: updates.clone().count() as u64,
                    security: updates.clone().filter(|u| u.security).count() as u64,
                    cves: cves.into_iter().collect(),
                    detail: serde_json::to_string(reports).unwrap_or_default(),
                    checked_at: report.checked_at,
                },
            )?;
        }
        Ok(())
    });
    if let Err(e) = r {
        ui.warn(&format!("the watch's findings are not in the catalog: {e}"));
    }
}

fn print_table(r: &Report) {
    let rows: Vec<[String; 5]> = r
        .images
        .iter()
        .map(|i| {
            let sec = i.updates.iter().filter(|u| u.security).count();
            [
                i.name.clone(),
                i.version.clone().unwrap_or_else(|| "-".into()),
                if i.architecture.is_empty() {
                    "-".into()
                } else {
                    i.architecture.clone()
                },
                i.status.name().to_string(),
                match i.status {
                    Status::Unknown => "?".into(),
                    _ if i.updates.is_empty() => "0".into(),
                    _ => format!("{} ({sec} security)", i.updates.len()),
                },
            ]
        })
        .collect();
    let head = ["IMAGE", "VERSION", "ARCH", "STATUS", "UPDATES"];
    let mut w = head.map(str::len);
    for row in &rows {
        for (k, c) in row.iter().enumerate() {
            w[k] = w[k].max(c.chars().count());
        }
    }
    let line = |c: [&str; 5]| {
        outln!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )
    };
    line(head);
    for (row, i) in rows.iter().zip(&r.images) {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
        if let Some(e) = &i.error {
            outln!("    cannot be checked: {e}");
        }
        for u in &i.updates {
            let cves = if u.cves.is_empty() {
                String::new()
            } else {
                format!(
                    "  {}{}",
                    u.cves.join(" "),
                    u.urgency
                        .as_deref()
                        .map(|x| format!(" ({x})"))
                        .unwrap_or_default()
                )
            };
            outln!(
                "    {} {} -> {}  {}{}",
                u.package,
                u.installed,
                u.candidate,
                u.suite,
                cves
            );
        }
        if !i.open.is_empty() {
            let fixed = i.open.iter().filter(|o| o.fixed_version.is_some()).count();
            outln!(
                "    {} open issue(s) with no fix in these sources{}",
                i.open.len(),
                if fixed > 0 {
                    format!(" ({fixed} fixed in a version not here yet)")
                } else {
                    String::new()
                }
            );
        }
    }
    for w in &r.warnings {
        outln!("warning: {w}");
    }
}

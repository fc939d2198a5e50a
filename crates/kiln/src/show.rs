//! `kiln show RECIPE`: the composed recipe with the file that set each
//! value, and what a build would do (packages, sizes, outputs) without
//! doing it.

use std::path::Path;

use anyhow::Result;
use kiln_build::fetch::human_size;
use kiln_build::SourceOptions;
use kiln_model::Reporter;
use kiln_recipe::trace::{trace, Setting};
use kiln_recipe::{Lock, Recipe};
use serde_json::json;

use crate::ui::Ui;

/// Where the plan's packages come from.
enum LockState {
    /// The lock beside the recipe matches it.
    Current,
    /// There is a lock, made from other inputs (which, in words).
    Stale(String),
    Missing,
}

pub fn cmd_show(
    ui: &Ui,
    reporter: &dyn Reporter,
    recipe_path: &Path,
    json: bool,
    resolve: bool,
    args: &SourceOptions,
) -> Result<()> {
    let recipe = Recipe::load(recipe_path)?;
    let settings = trace(&recipe.files)?;
    let lock_path = recipe.lock_path();
    let existing = if lock_path.exists() {
        Some(Lock::read(&lock_path)?)
    } else {
        None
    };
    let state = match &existing {
        Some(l) if l.check(&recipe, &lock_path).is_ok() => LockState::Current,
        Some(l) => LockState::Stale(l.what_changed(&recipe)),
        None => LockState::Missing,
    };
    let lock = match (&state, existing) {
        (LockState::Current, Some(l)) => Some(l),
        _ if resolve => Some(kiln_build::lock::resolve_recipe(&recipe, args, reporter)?),
        _ => None,
    };
    let out_dir = recipe.output_dir();
    let files = kiln_build::output::planned_files(&recipe);
    let lock_words = match &state {
        LockState::Current => "up to date".to_string(),
        LockState::Stale(what) if resolve => {
            format!("out of date ({what}); resolved now, not written (`kiln lock` writes it)")
        }
        LockState::Stale(what) => format!("out of date ({what})"),
        LockState::Missing if resolve => {
            "none yet; resolved now, not written (`kiln lock` writes it)".to_string()
        }
        LockState::Missing => "none yet".to_string(),
    };
    if json {
        let plan = lock.as_ref().map(|l| {
            json!({
                "architectures": recipe.image.architectures.iter().map(|a| {
                    let pk: Vec<_> = l.packages.iter().filter(|p| &p.target == a).collect();
                    json!({
                        "architecture": a,
                        "packages": pk.len(),
                        "download-size": pk.iter().map(|p| p.size).sum::<u64>(),
                        "installed-size": pk.iter().map(|p| p.installed_size.saturating_mul(1024)).sum::<u64>(),
                        "largest": largest(l, a, 10).iter().map(|p| json!({
                            "name": p.name, "version": p.version,
                            "installed-size": p.installed_size.saturating_mul(1024),
                        })).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
            })
        });
        let v = json!({
            "schema": "kiln-show/1",
            "recipe": recipe_path.display().to_string(),
            "files": recipe.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "settings": settings,
            "effective": recipe,
            "lock": {
                "path": lock_path.display().to_string(),
                "state": match state { LockState::Current => "current", LockState::Stale(_) => "stale", LockState::Missing => "missing" },
            },
            "plan": plan,
            "output-directory": out_dir.display().to_string(),
            "outputs": files,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let chain: Vec<String> = recipe
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    outln!(
        "# {} (merged from {})",
        recipe.image.name,
        chain.join(" <- ")
    );
    print_settings(&settings, &recipe);
    outln!();
    outln!("# Plan");
    outln!("lock: {} — {}", lock_path.display(), lock_words);
    match &lock {
        Some(l) => {
            for a in &recipe.image.architectures {
                let pk: Vec<_> = l.packages.iter().filter(|p| &p.target == a).collect();
                outln!(
                    "{a}: {} packages, {} to download, {} installed",
                    pk.len(),
                    human_size(pk.iter().map(|p| p.size).sum()),
                    human_size(
                        pk.iter()
                            .map(|p| p.installed_size.saturating_mul(1024))
                            .sum()
                    ),
                );
                let big = largest(l, a, 10);
                let w = big.iter().map(|p| p.name.len()).max().unwrap_or(0);
                for p in big {
                    outln!(
                        "  {:<w$}  {:>10}  {}",
                        p.name,
                        human_size(p.installed_size.saturating_mul(1024)),
                        p.version
                    );
                }
            }
        }
        None => {
            ui.warn(&format!(
                "no packages shown: {} is not current and --no-resolve was given",
                lock_path.display()
            ));
        }
    }
    outln!("outputs in {}:", out_dir.display());
    for f in &files {
        outln!("  {f}");
    }
    Ok(())
}

/// The `n` packages of `arch` that install the most bytes.
fn largest<'a>(l: &'a Lock, arch: &str, n: usize) -> Vec<&'a kiln_recipe::LockedPackage> {
    let mut v: Vec<_> = l.packages.iter().filter(|p| p.target == arch).collect();
    v.sort_by(|a, b| {
        b.installed_size
            .cmp(&a.installed_size)
            .then(a.name.cmp(&b.name))
    });
    v.truncate(n);
    v
}

/// The settings as TOML, each with the file and line that set it; the
/// defaults no file sets are listed after them.
fn print_settings(settings: &[Setting], recipe: &Recipe) {
    let base = recipe
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let shown = |p: &Path| {
        p.strip_prefix(&base)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    // Long values (file contents) cut; --json has them whole.
    let cut = |v: &str| {
        if v.chars().count() > 60 {
            format!("{}…", v.chars().take(59).collect::<String>())
        } else {
            v.to_string()
        }
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < settings.len() {
        let s = &settings[i];
        // A collected list: its elements together, each with its file.
        let mut j = i + 1;
        while j < settings.len() && settings[j].key == s.key {
            j += 1;
        }
        let group = &settings[i..j];
        let is_list = s.list;
        if is_list {
            for (n, e) in group.iter().enumerate() {
                let lhs = if n == 0 {
                    format!("{} = [ {}", s.key, cut(&e.value))
                } else {
                    format!("{}     {}", " ".repeat(s.key.len()), cut(&e.value))
                };
                let lhs = if n + 1 == group.len() {
                    format!("{lhs} ]")
                } else {
                    format!("{lhs},")
                };
                rows.push((lhs, format!("{}:{}", shown(&e.file), e.line)));
            }
        } else {
            rows.push((
                format!("{} = {}", s.key, cut(&s.value)),
                format!("{}:{}", shown(&s.file), s.line),
            ));
        }
        i = j;
    }
    let set = |k: &str| settings.iter().any(|s| s.key == k);
    // As JSON, which reads as TOML for these values.
    let j = |v: serde_json::Result<String>| v.unwrap_or_default().replace(',', ", ");
    let defaults = [
        (
            "image.architectures",
            j(serde_json::to_string(&recipe.image.architectures)),
        ),
        (
            "image.components",
            j(serde_json::to_string(&recipe.image.components)),
        ),
        (
            "packages.priority",
            j(serde_json::to_string(&recipe.packages.priority)),
        ),
        (
            "packages.recommends",
            j(serde_json::to_string(&recipe.packages.recommends)),
        ),
        (
            "output.formats",
            j(serde_json::to_string(&recipe.output.formats)),
        ),
    ];
    for (k, v) in defaults {
        if !set(k) {
            rows.push((format!("{k} = {v}"), "default".into()));
        }
    }
    let w = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(72);
    for (l, r) in rows {
        outln!("{l:<w$}  # {r}");
    }
}

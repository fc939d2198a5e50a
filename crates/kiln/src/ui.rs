//! User-facing output: data on stdout, progress and errors on stderr,
//! readable without colour.

use std::io::IsTerminal;

use kiln_build::fetch::human_size;
use kiln_model::{Event, JsonReporter, Reporter};

pub struct Ui {
    pub quiet: bool,
    pub color: bool,
    /// `-v`: every step with the seconds since the start.
    pub verbose: bool,
}

/// `--color`: `auto` is colour on a terminal unless `NO_COLOR` is set.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

impl Ui {
    pub fn new(quiet: bool, verbose: bool, color: ColorChoice) -> Ui {
        Ui {
            quiet,
            color: color.enabled(),
            verbose,
        }
    }

    /// A progress or status line on stderr.
    pub fn status(&self, verb: &str, msg: &str) {
        if self.quiet {
            return;
        }
        if self.color {
            errln!("\x1b[1;32m{verb:>10}\x1b[0m {msg}");
        } else {
            errln!("{verb:>10} {msg}");
        }
    }

    pub fn warn(&self, msg: &str) {
        if self.quiet {
            return;
        }
        if self.color {
            errln!("\x1b[1;33mwarning\x1b[0m: {msg}");
        } else {
            errln!("warning: {msg}");
        }
    }
}

/// Renders a build's events on stderr: status lines, a redrawn download
/// bar on a terminal, warnings. `KILN_TIMING` prefixes seconds since start.
pub struct Terminal<'a> {
    pub ui: &'a Ui,
    pub start: std::time::Instant,
    pub timing: bool,
    line: std::sync::Mutex<()>,
}

impl<'a> Terminal<'a> {
    pub fn new(ui: &'a Ui) -> Terminal<'a> {
        Terminal {
            ui,
            start: std::time::Instant::now(),
            timing: ui.verbose || std::env::var_os("KILN_TIMING").is_some(),
            line: std::sync::Mutex::new(()),
        }
    }
}

impl Reporter for Terminal<'_> {
    fn report(&self, event: Event) {
        let _g = self.line.lock().unwrap();
        if self.timing {
            if let Event::Step { stage, message } = &event {
                errln!(
                    "timing: {:.2}s {} {message}",
                    self.start.elapsed().as_secs_f64(),
                    stage.verb()
                );
            }
        }
        let ui = self.ui;
        match event {
            Event::Step { stage, message } => {
                ui.clear_progress();
                ui.status(stage.verb(), &message)
            }
            Event::Warning { message } => {
                ui.clear_progress();
                ui.warn(&message)
            }
            Event::Download {
                done,
                total,
                bytes,
                total_bytes,
                package,
                cached,
            } => {
                if ui.progress_bars() {
                    ui.progress(
                        "Fetching",
                        done,
                        total,
                        &format!("{} / {}", human_size(bytes), human_size(total_bytes)),
                    );
                    if done == total {
                        ui.clear_progress();
                    }
                } else if !cached {
                    ui.status("Fetched", &package);
                }
            }
            Event::Artifact {
                path,
                disk_size,
                sha256,
                ..
            } => ui.status(
                "Built",
                &format!("{path} ({}, sha256:{sha256})", human_size(disk_size)),
            ),
            Event::Finished { packages, seconds } => {
                ui.status("Finished", &format!("{packages} packages in {seconds:.1}s"))
            }
        }
    }
}

/// The reporter `--progress` asks for.
pub fn reporter<'a>(ui: &'a Ui, json: bool) -> Box<dyn Reporter + 'a> {
    if json {
        Box::new(JsonReporter::new(std::io::stderr()))
    } else {
        Box::new(Terminal::new(ui))
    }
}

/// Prints an error and, after a blank line, what to do about it.
pub fn report_error(ui: &Ui, e: &anyhow::Error) {
    let prefix = if ui.color {
        "\x1b[1;31merror\x1b[0m"
    } else {
        "error"
    };
    let top = e.to_string();
    errln!("{prefix}: {top}");
    let mut shown = top;
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !shown.contains(&c) {
            errln!("  caused by: {c}");
            shown.push_str(&c);
        }
    }
    if let Some(h) = hint(e) {
        errln!("\nhint: {h}");
    }
}

fn hint(e: &anyhow::Error) -> Option<String> {
    // A full disk, wherever it struck.
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(28))
    }) {
        return Some(
            "the disk is full: free space where the build happens (KILN_TMPDIR, /dev/shm or TMPDIR), \
             in the cache or in the output directory"
                .into(),
        );
    }
    for c in e.chain() {
        if let Some(x) = c.downcast_ref::<kiln_archive::ArchiveError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_catalog::CatalogError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_recipe::RecipeError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_resolve::ResolveError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_attest::AttestError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_registry::RegistryError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_rootfs::RootfsError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_image::disk::DiskError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_qemu::QemuError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_serve::ServeError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_publish::PublishError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_cloud::CloudError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<kiln_image::cloud::CloudFormatError>() {
            return x.hint();
        }
        if let Some(x) = c.downcast_ref::<crate::cmd::Usage>() {
            return Some(x.0.hint.clone());
        }
        if let Some(x) = c.downcast_ref::<kiln_model::Hinted>() {
            return Some(x.hint.clone());
        }
        if let Some(x) = c.downcast_ref::<kiln_model::ManifestError>() {
            return x.hint();
        }
    }
    None
}

impl Ui {
    /// Whether to draw a redrawn progress line (a terminal, not quiet).
    pub fn progress_bars(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    /// Redraws the progress line: `verb [=====>    ] n/total detail`.
    pub fn progress(&self, verb: &str, n: usize, total: usize, detail: &str) {
        if !self.progress_bars() {
            return;
        }
        let width = 30;
        let filled = (n * width).checked_div(total).unwrap_or(width);
        let bar: String = (0..width)
            .map(|i| {
                if i < filled {
                    '='
                } else if i == filled {
                    '>'
                } else {
                    ' '
                }
            })
            .collect();
        errw!("\r\x1b[2K{verb:>10} [{bar}] {n}/{total} {detail}");
    }

    pub fn clear_progress(&self) {
        if self.progress_bars() {
            errw!("\r\x1b[2K");
        }
    }
}

//! Progress as typed events. The terminal display is one [`Reporter`],
//! JSON lines (`--progress json`, for CI systems and the watcher) another.

use serde::Serialize;

/// A step of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Release files and indexes.
    Index,
    Lock,
    Fetch,
    Unpack,
    Install,
    Customize,
    /// An artifact is being written.
    Write,
    /// /usr is sealed (read-only image + verity).
    Seal,
    /// The UKI and other boot pieces.
    Boot,
    Reproduce,
    /// Two builds gave identical artifacts.
    Reproduced,
    Verify,
    /// A lock was checked against its recipe.
    LockChecked,
    Test,
    /// Static checks of a built image.
    Check,
    /// A test guest boots in QEMU.
    Guest,
    Push,
    Pushed,
    /// `kiln publish` checks and sends a build.
    Publish,
    /// A build is in a download tree or a registry.
    Published,
    /// Space left by a Kiln that died (build areas, temporary files) was freed.
    Reclaim,
    /// A package a new lock has that the previous one did not.
    Added,
    /// A package the previous lock had that the new one does not.
    Removed,
    /// A package at another version in the new lock.
    Updated,
}

impl Stage {
    /// The verb a terminal shows for this stage.
    pub fn verb(self) -> &'static str {
        match self {
            Stage::Index => "Fetching",
            Stage::Lock => "Locked",
            Stage::Fetch => "Fetched",
            Stage::Unpack => "Unpacking",
            Stage::Install => "Installing",
            Stage::Customize => "Customizing",
            Stage::Write => "Writing",
            Stage::Seal => "Sealing",
            Stage::Boot => "Building",
            Stage::Reproduce => "Rebuilding",
            Stage::Reproduced => "Reproducible",
            Stage::Verify => "Verified",
            Stage::Test => "Testing",
            Stage::LockChecked => "Checked",
            Stage::Check => "Checking",
            Stage::Guest => "Booting",
            Stage::Push => "Pushing",
            Stage::Pushed => "Pushed",
            Stage::Publish => "Publishing",
            Stage::Published => "Published",
            Stage::Reclaim => "Reclaimed",
            Stage::Added => "Added",
            Stage::Removed => "Removed",
            Stage::Updated => "Updated",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(
    tag = "event",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Event {
    /// A step begins or reports what it did.
    Step { stage: Stage, message: String },
    /// Something the user should know; the build goes on.
    Warning { message: String },
    /// Package downloads: `done` of `total` packages, bytes so far.
    Download {
        done: usize,
        total: usize,
        bytes: u64,
        total_bytes: u64,
        /// The package just finished.
        package: String,
        /// It came from the cache (no download).
        cached: bool,
    },
    /// An artifact was written (path relative to the output directory).
    Artifact {
        path: String,
        format: String,
        /// The size of what `sha256` is the digest of (for an OCI layout:
        /// its top index or manifest, as in `manifest.json`).
        size: u64,
        /// The bytes it takes on disk (for an OCI layout: every blob).
        disk_size: u64,
        sha256: String,
    },
    /// The whole build finished.
    Finished { packages: usize, seconds: f64 },
}

/// Receives a build's events; called from the build's threads.
pub trait Reporter: Sync {
    fn report(&self, event: Event);

    fn step(&self, stage: Stage, message: &str) {
        self.report(Event::Step {
            stage,
            message: message.to_string(),
        })
    }

    fn warn(&self, message: &str) {
        self.report(Event::Warning {
            message: message.to_string(),
        })
    }
}

/// Drops every event.
pub struct NullReporter;

impl Reporter for NullReporter {
    fn report(&self, _event: Event) {}
}

/// One JSON object per line on the given writer (stderr for the CLI).
pub struct JsonReporter<W: std::io::Write + Send>(pub std::sync::Mutex<W>);

impl<W: std::io::Write + Send> JsonReporter<W> {
    pub fn new(w: W) -> Self {
        JsonReporter(std::sync::Mutex::new(w))
    }
}

impl<W: std::io::Write + Send> Reporter for JsonReporter<W> {
    fn report(&self, event: Event) {
        let line = serde_json::to_string(&event).expect("events serialise");
        let mut w = self.0.lock().unwrap();
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    }
}

/// Collects events in memory (tests, and callers that render later).
#[derive(Default)]
pub struct Collect(pub std::sync::Mutex<Vec<Event>>);

impl Reporter for Collect {
    fn report(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_with_a_type_tag() {
        let r = JsonReporter::new(Vec::new());
        r.step(Stage::Install, "59 Essential packages");
        r.warn("careful");
        let out = String::from_utf8(r.0.into_inner().unwrap()).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "step");
        assert_eq!(lines[0]["stage"], "install");
        assert_eq!(lines[1]["event"], "warning");
        assert_eq!(lines[1]["message"], "careful");
    }
}

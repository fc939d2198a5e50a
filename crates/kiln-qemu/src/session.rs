//! A boot session that spans reboots: the guest may restart itself (an
//! update, a failed health gate) and QEMU keeps running it, with the same
//! disk and firmware variables, until the watcher has seen enough of the
//! console, the guest powers off or the deadline passes.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_model::{Cancel, Reporter, Stage};

use crate::{qemu_command, Guest, ImageFormat, Machine, QemuError};

pub struct Session<'a> {
    pub machine: &'a Machine,
    /// Scratch directory (firmware variables).
    pub work: &'a Path,
    /// The disk the guest writes (an overlay the caller made).
    pub disk: &'a Path,
    pub seed: &'a Path,
    /// Where the serial console is written (replaced if present).
    pub console: &'a Path,
    pub memory: u32,
    pub cpus: u32,
    pub timeout: u64,
    pub cancel: Option<&'a Cancel>,
    /// More QEMU arguments (e.g. `-smbios type=11,…` credentials).
    pub extra: &'a [String],
}

/// What the watcher makes of the console so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    Continue,
    Done,
    Failed(String),
}

/// Runs the session; `watch` is called with the whole console text every
/// half second. Returns the last verdict (`Failed` on timeout, or when the
/// guest stopped before the watcher was done) and the seconds it took.
pub fn run_session(
    s: &Session,
    reporter: &dyn Reporter,
    watch: &mut dyn FnMut(&str) -> Watch,
) -> Result<(Watch, f64), QemuError> {
    let mut c = qemu_command(
        s.machine,
        s.work,
        &Guest {
            disk: s.disk,
            format: ImageFormat::Qcow2,
            seed: Some(s.seed),
            memory: s.memory,
            cpus: s.cpus,
            net_extra: String::new(),
        },
    )?;
    let _ = std::fs::remove_file(s.console);
    c.args(s.extra);
    c.args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", s.console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().map_err(|source| QemuError::Start {
        qemu: s.machine.qemu.clone(),
        source,
    })?;
    if let Some(cancel) = s.cancel {
        cancel.child_started(child.id());
    }
    let mut last_note = Instant::now();
    let verdict = loop {
        std::thread::sleep(Duration::from_millis(500));
        let text =
            String::from_utf8_lossy(&std::fs::read(s.console).unwrap_or_default()).to_string();
        match watch(&text) {
            Watch::Continue => {}
            v => {
                // Let the guest finish writing what it was saying.
                std::thread::sleep(Duration::from_secs(1));
                break v;
            }
        }
        if child.try_wait()?.is_some() {
            let text =
                String::from_utf8_lossy(&std::fs::read(s.console).unwrap_or_default()).to_string();
            break match watch(&text) {
                Watch::Continue => Watch::Failed("the machine powered off before the end".into()),
                v => v,
            };
        }
        if start.elapsed() > Duration::from_secs(s.timeout) {
            break Watch::Failed(format!("timed out after {} s", s.timeout));
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            last_note = Instant::now();
            let stage: String = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(70)
                .collect();
            reporter.step(
                Stage::Guest,
                &format!("{:.0}s: {stage}", start.elapsed().as_secs_f64()),
            );
        }
    };
    let _ = child.kill();
    if let Some(cancel) = s.cancel {
        cancel.child_finished(child.id());
    }
    let _ = child.wait();
    Ok((verdict, start.elapsed().as_secs_f64()))
}

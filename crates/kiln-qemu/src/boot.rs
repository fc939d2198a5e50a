//! Booting a disk image: unattended with a deadline (`kiln test`), or with
//! the serial console on the caller's terminal (`kiln boot`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_model::{Cancel, Reporter, Stage};

use crate::{
    make_seed, overlay, parse_console, qemu_command, virtual_size, BootResult, Guest, ImageFormat,
    Machine, QemuError,
};

/// One unattended boot of a disk image with a test seed.
#[derive(Clone, Debug)]
pub struct BootTest<'a> {
    pub machine: &'a Machine,
    /// Scratch directory: the overlay and firmware variables go here.
    pub work: &'a Path,
    /// The image; booted through an overlay, never written.
    pub image: &'a Path,
    /// The seed from [`make_seed`] with a runner.
    pub seed: &'a Path,
    /// Where the serial console is written (replaced if present).
    pub console: &'a Path,
    /// Memory in MiB.
    pub memory: u32,
    pub cpus: u32,
    /// Seconds to wait for the guest's results.
    pub timeout: u64,
    /// How many test commands the seed's runner runs.
    pub tests: usize,
    /// Kills QEMU when the command is cancelled (Ctrl-C, SIGTERM).
    pub cancel: Option<&'a Cancel>,
}

/// Boots the image once and reads the results from the console log.
///
/// The boot ends when QEMU exits, a [`FATAL`](crate::FATAL) line appears,
/// a minute after the runner's last line or at the deadline; a boot that
/// ends without the runner's results has `fatal` set. A progress line goes
/// to the reporter every 30 seconds.
pub fn boot_once(b: &BootTest, reporter: &dyn Reporter) -> Result<BootResult, QemuError> {
    crate::check_disk_image(b.image)?;
    let m = b.machine;
    let log = b.console;
    let ov = overlay(b.work, b.image, virtual_size(b.image)?)?;
    let mut c = qemu_command(
        m,
        b.work,
        &Guest {
            disk: &ov,
            format: ImageFormat::Qcow2,
            seed: Some(b.seed),
            memory: b.memory,
            cpus: b.cpus,
            net_extra: String::new(),
        },
    )?;
    let _ = std::fs::remove_file(log);
    c.args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().map_err(|source| QemuError::Start {
        qemu: m.qemu.clone(),
        source,
    })?;
    if let Some(cancel) = b.cancel {
        cancel.child_started(child.id());
    }
    let mut r = BootResult::default();
    let deadline = Duration::from_secs(b.timeout);
    let mut ended_at: Option<Instant> = None;
    let mut last_note = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).to_string();
        let mut now = parse_console(&text, b.tests);
        if r.login_after.is_none() && text.contains(" login: ") {
            r.login_after = Some(start.elapsed().as_secs_f64());
        }
        now.login_after = r.login_after;
        r = now;
        let exited = child.try_wait()?.is_some();
        if r.ended && ended_at.is_none() {
            ended_at = Some(Instant::now());
        }
        if exited {
            break;
        }
        if r.fatal.is_some() {
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        if ended_at.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            break;
        }
        if start.elapsed() > deadline {
            r.fatal = Some(format!(
                "timed out after {} s (no result from the guest)",
                b.timeout
            ));
            break;
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            last_note = Instant::now();
            let stage = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let stage: String = stage.chars().filter(|c| !c.is_control()).take(70).collect();
            reporter.step(
                Stage::Guest,
                &format!("{:.0}s: {stage}", start.elapsed().as_secs_f64()),
            );
        }
    }
    let _ = child.kill();
    if let Some(cancel) = b.cancel {
        cancel.child_finished(child.id());
    }
    let out = child.wait_with_output()?;
    r.seconds = start.elapsed().as_secs_f64();
    if !r.ended && r.fatal.is_none() {
        let err = String::from_utf8_lossy(&out.stderr);
        r.fatal = Some(format!(
            "the machine stopped before the tests finished{}",
            if err.trim().is_empty() {
                String::new()
            } else {
                format!(" (qemu: {})", err.trim())
            }
        ));
    }
    Ok(r)
}

/// An interactive boot: the image in QEMU with its serial console (and
/// QEMU's monitor, Ctrl-a c) on this process's stdio; Ctrl-a x quits.
#[derive(Clone, Debug)]
pub struct ConsoleBoot {
    pub image: PathBuf,
    /// Write changes to the image itself (else a throwaway overlay).
    pub persist: bool,
    /// Memory in MiB.
    pub memory: u32,
    pub cpus: u32,
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// Seconds after which QEMU is stopped; 0: never.
    pub timeout: u64,
    /// Public keys the guest's `kiln` user accepts (the first one is used;
    /// none: no seed, the image boots as it is). See
    /// [`user_ssh_keys`](crate::user_ssh_keys).
    pub ssh_keys: Vec<String>,
}

/// A prepared interactive boot: its scratch directory lives as long as this.
pub struct ConsoleGuest {
    command: Command,
    qemu: PathBuf,
    seeded: bool,
    timeout: u64,
    work: tempfile::TempDir,
}

impl ConsoleBoot {
    /// Finds QEMU and firmware, makes the overlay (unless `persist`) and a
    /// seed with the first SSH key, and builds the QEMU command.
    pub fn prepare(&self) -> Result<ConsoleGuest, QemuError> {
        let image = &self.image;
        crate::check_disk_image(image)?;
        let m = crate::machine()?;
        let work = tempfile::Builder::new().prefix("kiln-boot-").tempdir()?;
        let disk_path = if self.persist {
            image.clone()
        } else {
            overlay(work.path(), image, virtual_size(image)?)?
        };
        // A seed with the caller's SSH keys, so `ssh -p PORT kiln@localhost` works.
        let seed = match self.ssh_keys.first() {
            Some(k) => Some(make_seed(work.path(), k, None)?),
            None => None,
        };
        // --persist boots the image itself (in its own format), else the overlay.
        let format = if self.persist {
            ImageFormat::detect(image)
        } else {
            ImageFormat::Qcow2
        };
        let mut c = qemu_command(
            &m,
            work.path(),
            &Guest {
                disk: &disk_path,
                format,
                seed: seed.as_deref(),
                memory: self.memory,
                cpus: self.cpus,
                net_extra: format!(",hostfwd=tcp:127.0.0.1:{}-:22", self.ssh_port),
            },
        )?;
        c.args(["-nographic", "-serial", "mon:stdio"]);
        Ok(ConsoleGuest {
            command: c,
            qemu: m.qemu,
            seeded: seed.is_some(),
            timeout: self.timeout,
            work,
        })
    }
}

impl ConsoleGuest {
    /// Whether the guest got a seed (and so accepts SSH logins as `kiln`).
    pub fn seeded(&self) -> bool {
        self.seeded
    }

    /// The QEMU command that [`run`](ConsoleGuest::run) starts.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// Runs QEMU in the foreground until it exits, or until the timeout,
    /// when it is killed. `cancel` kills it and removes the scratch
    /// directory on Ctrl-C or SIGTERM to Kiln.
    pub fn run(mut self, cancel: &Cancel) -> Result<(), QemuError> {
        let mut child = self.command.spawn().map_err(|source| QemuError::Run {
            qemu: self.qemu.clone(),
            source,
        })?;
        cancel.child_started(child.id());
        cancel.track_dir(self.work.path());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if self.timeout > 0 && start.elapsed() > Duration::from_secs(self.timeout) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        cancel.child_finished(child.id());
        cancel.untrack_dir(self.work.path());
        match status {
            None => Err(QemuError::TimedOut(self.timeout)),
            Some(s) if !s.success() => Err(QemuError::Exited(s.to_string())),
            Some(_) => Ok(()),
        }
    }
}

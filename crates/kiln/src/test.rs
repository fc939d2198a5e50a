//! `kiln test` and `kiln boot`: arguments to a library request, and the
//! results rendered. The work is in kiln-check and kiln-qemu.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_check::{Outcome, TestRequest};
use kiln_model::{Cancel, Hinted, Reporter};
use serde_json::json;

use crate::ui::Ui;

pub struct TestArgs {
    pub target: PathBuf,
    pub timeout: u64,
    pub skip_static: bool,
    pub skip_boot: bool,
    pub allow_users: Vec<String>,
    pub memory: u32,
    pub cpus: u32,
    pub json: bool,
}

impl TestArgs {
    fn request(&self) -> TestRequest {
        TestRequest {
            target: self.target.clone(),
            timeout: self.timeout,
            skip_static: self.skip_static,
            skip_boot: self.skip_boot,
            allow_users: self.allow_users.clone(),
            memory: self.memory,
            cpus: self.cpus,
        }
    }
}

fn print_outcome(ui: &Ui, o: &Outcome) {
    match (&o.failure, &o.skipped) {
        (Some(f), _) => ui.status("FAIL", &format!("{}: {f}", o.name)),
        (None, Some(s)) => ui.status("skip", &format!("{} ({s})", o.name)),
        _ => ui.status("ok", &o.name),
    }
}

/// A finished test run: the report, and where its catalog record goes.
pub struct Ran {
    pub report: kiln_check::TestReport,
    pub seconds: f64,
}

impl Ran {
    /// The build's output directory and the tested artifact's name in it,
    /// when the image is a build's output.
    pub fn build_artifact(&self) -> Option<(&Path, String)> {
        let r = &self.report;
        let (dir, name) = (r.image.parent()?, r.image.file_name()?);
        dir.join(kiln_model::manifest::MANIFEST_FILE)
            .is_file()
            .then(|| (dir, name.to_string_lossy().into_owned()))
    }

    /// A build output's image: the run goes into the catalog (a warning
    /// when it cannot).
    pub fn record(&self, ui: &Ui, catalog: Option<&Path>) {
        if let Some((dir, name)) = self.build_artifact() {
            crate::catalog::record_test(
                ui,
                catalog,
                dir,
                &name,
                self.report.passed,
                self.seconds,
                &self.report.report,
            );
        }
    }

    /// Ok when every check passed; else the error naming the failed ones.
    pub fn result(&self) -> Result<()> {
        let r = &self.report;
        if r.passed {
            return Ok(());
        }
        let failed: Vec<&Outcome> = r.failed().collect();
        Err(Hinted {
            message: format!(
                "{} of {} checks failed on {}: {}",
                failed.len(),
                r.outcomes.len(),
                r.image.display(),
                failed
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint: format!(
                "details in {} and {}",
                r.report.display(),
                r.console.display()
            ),
        }
        .into())
    }
}

/// `kiln test TARGET`.
pub fn cmd_test(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    args: &TestArgs,
) -> Result<()> {
    let ran = run(ui, reporter, cancel, args)?;
    ran.record(ui, catalog);
    ran.result()
}

/// Runs the tests and shows their results (nothing is recorded): a disk
/// image is checked and booted; a build with no disk but a rootfs tarball
/// or an OCI image gets its `[[test]]` commands run in the build sandbox.
pub fn run(ui: &Ui, reporter: &dyn Reporter, cancel: &Cancel, args: &TestArgs) -> Result<Ran> {
    let start = std::time::Instant::now();
    let r = match container_build(&args.target)? {
        Some(dir) => test_container(ui, cancel, &dir, args)?,
        None => kiln_check::test_image_with(&args.request(), reporter, cancel, &mut |o| {
            print_outcome(ui, o)
        })?,
    };
    if let Some(t) = r.timing {
        ui.status(
            "Timing",
            &format!(
                "power-on to login prompt {:.1}s, whole boot test {:.1}s",
                t.to_login, t.total
            ),
        );
    }
    if args.json {
        let v = json!({
            "image": r.image.display().to_string(),
            "report": r.report.display().to_string(),
            "console": if r.boot { Some(r.console.display().to_string()) } else { None },
            "passed": r.passed,
            "checks": r.outcomes.iter().map(|o| json!({
                "group": o.group, "name": o.name,
                "result": o.result(),
                "message": o.message(),
            })).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    }
    ui.status("Report", &r.report.display().to_string());
    if r.passed {
        ui.status(
            "Passed",
            &format!("{} checks on {}", r.outcomes.len(), r.image.display()),
        );
    } else if !r.console_tail.is_empty() {
        errln!(
            "--- last console lines ({}) ---\n{}\n---",
            r.console.display(),
            kiln_check::tail(&r.console_tail, 25)
        );
    }
    Ok(Ran {
        report: r,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The build output directory `target` names (itself, or a recipe's
/// output) when it has no disk image but a rootfs tarball or OCI image.
fn container_build(target: &Path) -> Result<Option<PathBuf>> {
    let dir = if target.extension().is_some_and(|e| e == "toml") {
        kiln_recipe::Recipe::load(target)?.output_dir()
    } else if target.is_dir() {
        target.to_path_buf()
    } else {
        return Ok(None);
    };
    if kiln_check::find_image(&dir).is_file() || !dir.join(kiln_model::MANIFEST_FILE).is_file() {
        return Ok(None);
    }
    let m = kiln_model::Manifest::read_dir(&dir)?;
    let container = m
        .outputs
        .iter()
        .any(|o| matches!(o.format, kiln_model::Format::Tar | kiln_model::Format::Oci));
    Ok(container.then_some(dir))
}

/// `kiln test` of a container build: its `[[test]]` commands (from the
/// manifest), each run with `/bin/sh -c` as root in the build sandbox (no
/// network) on one throwaway copy of the host architecture's image. The
/// JUnit report is `STEM.test.xml` beside the tested tarball or layout.
fn test_container(
    ui: &Ui,
    cancel: &Cancel,
    dir: &Path,
    args: &TestArgs,
) -> Result<kiln_check::TestReport> {
    if args.skip_static && args.skip_boot {
        return Err(crate::cmd::Usage::new(
            "--skip-static with --skip-boot leaves nothing to test",
            "give one of them",
        )
        .into());
    }
    let m = kiln_model::Manifest::read_dir(dir)?;
    // The commands run here: the host architecture's image.
    let host = kiln_recipe::host_architecture();
    if !m.architectures.iter().any(|a| a == host) {
        return Err(Hinted::new(
            format!(
                "{} has no {host} image ({}): its test commands cannot run on this machine",
                dir.display(),
                m.architectures.join(", ")
            ),
            format!(
                "run kiln test on a {} machine",
                m.architectures.join(" or ")
            ),
        )
        .into());
    }
    let (source, image) = crate::shell::image_of(dir, Some(host))?;
    let stem = image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .to_string();
    let report = dir.join(format!("{stem}.test.xml"));
    let console = dir.join(format!("{stem}.console.log"));
    let _ = std::fs::remove_file(&report);
    let mut outcomes: Vec<Outcome> = Vec::new();
    if m.tests.is_empty() {
        let o = Outcome::skip(
            "container",
            "commands",
            "the recipe has no [[test]] entries",
        );
        print_outcome(ui, &o);
        outcomes.push(o);
    } else if args.skip_boot {
        for t in &m.tests {
            let o = Outcome::skip("container", &t.name, "--skip-boot");
            print_outcome(ui, &o);
            outcomes.push(o);
        }
    } else {
        let scratch = tempfile::Builder::new()
            .prefix("kiln-test-")
            .tempdir()
            .map_err(|e| anyhow::anyhow!("creating a scratch directory: {e}"))?;
        cancel.track_dir(scratch.path());
        let root = scratch.path().join("root");
        std::fs::create_dir(&root)?;
        ui.status("Unpacking", &image.display().to_string());
        let ran = crate::shell::unpack(&source, &root)
            .map_err(|e| e.context(format!("unpacking {}", image.display())))
            .and_then(|()| run_commands(ui, cancel, &root, &m.tests, &console, &mut outcomes));
        cancel.untrack_dir(scratch.path());
        ran?;
    }
    let tail = std::fs::read_to_string(&console).unwrap_or_default();
    let tail = kiln_check::tail(&tail, 60);
    let xml = kiln_check::junit(&image, &outcomes, &tail);
    kiln_model::fsutil::write_atomic(&report, xml.as_bytes())?;
    let passed = !outcomes.iter().any(Outcome::failed);
    Ok(kiln_check::TestReport {
        image,
        report,
        console,
        boot: !args.skip_boot,
        outcomes,
        console_tail: if passed { String::new() } else { tail },
        timing: None,
        passed,
    })
}

/// Each test in `root`, its output appended to `console`.
fn run_commands(
    ui: &Ui,
    cancel: &Cancel,
    root: &Path,
    tests: &[kiln_model::manifest::TestSpec],
    console: &Path,
    outcomes: &mut Vec<Outcome>,
) -> Result<()> {
    use std::io::Write;
    let mut log = std::fs::File::create(console)?;
    let env = kiln_rootfs::sandbox::script_env(0);
    let out = root.parent().unwrap_or(root).join("test.out");
    for t in tests {
        let started = std::time::Instant::now();
        let _ = std::fs::remove_file(&out);
        let status = kiln_rootfs::sandbox::run_in_root_with(
            root,
            &["/bin/sh", "-c", &t.command],
            &env,
            &out,
            cancel,
            kiln_rootfs::sandbox::Options::default(),
        );
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        writeln!(log, "=== {} ({})", t.name, t.command)?;
        log.write_all(text.as_bytes())?;
        let mut o = match status {
            Err(kiln_rootfs::sandbox::SandboxError::NoEnv { .. }) => Outcome::fail(
                "container",
                &t.name,
                "the image has no /usr/bin/env and /bin/sh to run test commands with".into(),
            ),
            Err(e) => return Err(e.into()),
            Ok(s) if !s.success() => Outcome::fail(
                "container",
                &t.name,
                format!("exited with {s}: {}", last_line(&text)),
            ),
            Ok(_) => match &t.expect {
                Some(want) if !text.contains(want.as_str()) => Outcome::fail(
                    "container",
                    &t.name,
                    format!("the output lacks {want:?}: {}", last_line(&text)),
                ),
                _ => Outcome::pass("container", &t.name),
            },
        };
        o.seconds = started.elapsed().as_secs_f64();
        print_outcome(ui, &o);
        outcomes.push(o);
    }
    Ok(())
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .chars()
        .take(200)
        .collect()
}

pub struct BootArgs {
    pub image: PathBuf,
    pub persist: bool,
    pub memory: u32,
    pub cpus: u32,
    pub ssh_port: u16,
    pub timeout: u64,
}

/// `kiln boot IMAGE`: the image in QEMU with the serial console on this terminal.
pub fn cmd_boot(ui: &Ui, cancel: &Cancel, args: &BootArgs) -> Result<()> {
    let image = if args.image.is_dir() {
        kiln_check::find_image(&args.image)
    } else {
        args.image.clone()
    };
    if !image.is_file() {
        return Err(Hinted {
            message: format!("no disk image at {}", image.display()),
            hint: "build one with formats = [\"disk\"]".into(),
        }
        .into());
    }
    let guest = kiln_qemu::ConsoleBoot {
        image: image.clone(),
        persist: args.persist,
        memory: args.memory,
        cpus: args.cpus,
        ssh_port: args.ssh_port,
        timeout: args.timeout,
        ssh_keys: kiln_qemu::user_ssh_keys(),
    }
    .prepare()?;
    ui.status(
        "Booting",
        &format!(
            "{}{} — Ctrl-a x quits{}",
            image.display(),
            if args.persist {
                ""
            } else {
                " (changes are discarded)"
            },
            if guest.seeded() {
                format!("; ssh -p {} kiln@127.0.0.1", args.ssh_port)
            } else {
                String::new()
            }
        ),
    );
    guest.run(cancel)?;
    Ok(())
}

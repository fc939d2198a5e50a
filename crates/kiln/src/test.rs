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

/// `kiln test TARGET`.
pub fn cmd_test(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    args: &TestArgs,
) -> Result<()> {
    let start = std::time::Instant::now();
    let r = kiln_check::test_image_with(&args.request(), reporter, cancel, &mut |o| {
        print_outcome(ui, o)
    })?;
    // A build output's image: the run goes into the catalog.
    if let (Some(dir), Some(name)) = (r.image.parent(), r.image.file_name()) {
        if dir.join(kiln_model::manifest::MANIFEST_FILE).is_file() {
            crate::catalog::record_test(
                ui,
                catalog,
                dir,
                &name.to_string_lossy(),
                r.passed,
                start.elapsed().as_secs_f64(),
                &r.report,
            );
        }
    }
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
        return Ok(());
    }
    if !r.console_tail.is_empty() {
        errln!(
            "--- last console lines ({}) ---\n{}\n---",
            r.console.display(),
            kiln_check::tail(&r.console_tail, 25)
        );
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

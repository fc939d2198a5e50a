//! The `kiln test` orchestration: resolve the target, static checks, boot
//! test, JUnit report.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_image::disk;
use kiln_image::gpt;
use kiln_model::{Cancel, Reporter, Stage};
use kiln_qemu::{BootResult, BootTest, CommandResult, ImageFormat};
use kiln_recipe::TestEntry;

use crate::{junit, static_checks, BootTiming, Outcome, Target, TestReport, TestRequest};

/// The boot's outcomes: reaching `multi-user.target`, no failed units, a
/// login prompt, then one per test command (exit status 0 and, if given,
/// the expected text in its output). A test without a result read back
/// fails.
pub fn boot_outcomes(r: &BootResult, tests: &[TestEntry]) -> Vec<Outcome> {
    const G: &str = "boot";
    let mut out = Vec::new();
    let mut reached = Outcome::pass(G, "boots to multi-user.target");
    reached.seconds = r.seconds;
    match (&r.fatal, r.state.as_deref()) {
        (Some(f), _) => reached.failure = Some(f.clone()),
        (None, None) => reached.failure = Some("no result from the guest".into()),
        // degraded: booted, with failed units (the next check names them).
        (None, Some("running" | "degraded")) => {}
        (None, Some(s)) => {
            reached.failure = Some(format!(
                "the boot did not finish (system state `{}`)",
                if s.is_empty() {
                    "unknown: still starting after 900 s"
                } else {
                    s
                }
            ))
        }
    }
    out.push(reached);
    out.push(match (&r.state, r.failed_units.is_empty()) {
        (Some(_), true) => Outcome::pass(G, "no failed units"),
        (Some(s), false) => Outcome::fail(
            G,
            "no failed units",
            format!("system is {s}; failed: {}", r.failed_units.join(", ")),
        ),
        (None, _) => Outcome::fail(G, "no failed units", "not reached".into()),
    });
    out.push(match r.login_after {
        Some(_) => Outcome::pass(G, "login prompt on the serial console"),
        None => Outcome::fail(
            G,
            "login prompt on the serial console",
            "no `login:` prompt seen".into(),
        ),
    });
    for (i, t) in tests.iter().enumerate() {
        let name = format!("test: {}", t.name);
        let CommandResult { status, output } = r.results.get(i).cloned().unwrap_or_default();
        let o = match (status, output) {
            (None, _) | (_, None) => {
                Outcome::fail(G, &name, "no result read back from the console".into())
            }
            (Some(rc), Some(text)) => {
                let mut p = Vec::new();
                if rc != 0 {
                    p.push(format!("`{}` exited with {rc}", t.command));
                }
                if let Some(e) = &t.expect {
                    if !text.contains(e.as_str()) {
                        p.push(format!("output lacks `{e}`"));
                    }
                }
                if !p.is_empty() {
                    let shown: String = text.trim().chars().take(300).collect();
                    p.push(format!("output: {shown}"));
                }
                Outcome::check(G, &name, p)
            }
        };
        out.push(o);
    }
    out
}

/// The last `n` lines of `text` (carriage returns dropped).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Tests a disk image: see [`test_image_with`].
pub fn test_image(
    req: &TestRequest,
    reporter: &dyn Reporter,
    cancel: &Cancel,
) -> Result<TestReport> {
    test_image_with(req, reporter, cancel, &mut |_| {})
}

/// Tests a disk image: static checks (unless `skip_static`), then a boot in
/// QEMU running the `[[test]]` commands (unless `skip_boot`); writes the
/// JUnit report `STEM.test.xml` and the console log `STEM.console.log`
/// beside the image. `on_outcome` sees the outcomes of the checks that ran
/// as soon as their group finishes; a boot test refused before it starts
/// (an arm64 disk, a broken partition table, no cloud-init) is only in the
/// report, which holds every outcome. Errors are for tests that could not
/// run: no image, no QEMU or firmware, an unreadable manifest.
pub fn test_image_with(
    req: &TestRequest,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    on_outcome: &mut dyn FnMut(&Outcome),
) -> Result<TestReport> {
    let mut t = Target::resolve(&req.target)?;
    t.users.extend(req.allow_users.iter().cloned());
    let stem = t
        .image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("disk")
        .to_string();
    let report = t.dir.join(format!("{stem}.test.xml"));
    let console = t.dir.join(format!("{stem}.console.log"));
    // Fail early on a missing QEMU or firmware, before any work.
    let _ = std::fs::remove_file(&report);
    let m = if req.skip_boot {
        None
    } else {
        Some(kiln_qemu::machine()?)
    };
    let work = tempfile::Builder::new()
        .prefix("kiln-test-")
        .tempdir_in(kiln_model::fsutil::scratch_base(
            kiln_qemu::virtual_size(&t.image)? * 2,
        ))
        .context("creating a scratch directory")?;
    cancel.track_dir(work.path());
    let r = run(
        req,
        reporter,
        cancel,
        &t,
        m.as_ref(),
        work.path(),
        &stem,
        &console,
        on_outcome,
    );
    let work_path = work.path().to_path_buf();
    drop(work);
    cancel.untrack_dir(&work_path);
    let (outcomes, console_tail, timing) = r?;
    let xml = junit(&t.image, &outcomes, &console_tail);
    kiln_model::fsutil::write_atomic(&report, xml.as_bytes())?;
    let passed = !outcomes.iter().any(Outcome::failed);
    Ok(TestReport {
        image: t.image,
        report,
        console,
        boot: !req.skip_boot,
        outcomes,
        console_tail,
        timing,
        passed,
    })
}

type Found = (Vec<Outcome>, String, Option<BootTiming>);

/// The checks themselves, in the scratch directory `work`.
#[allow(clippy::too_many_arguments)]
fn run(
    req: &TestRequest,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    t: &Target,
    m: Option<&kiln_qemu::Machine>,
    work: &Path,
    stem: &str,
    console: &Path,
    on_outcome: &mut dyn FnMut(&Outcome),
) -> Result<Found> {
    let mut outcomes = Vec::new();
    let raw = if ImageFormat::detect(&t.image) == ImageFormat::Qcow2 {
        let p = work.join("disk.raw");
        let mut c = Command::new(disk::find_tool("qemu-img")?);
        c.args(["convert", "-q", "-O", "raw"]).arg(&t.image).arg(&p);
        disk::run(&mut c)?;
        p
    } else {
        t.image.clone()
    };
    let mut has_cloud_init = true;
    if !req.skip_static {
        reporter.step(
            Stage::Check,
            &format!("{} (static checks)", t.image.display()),
        );
        let started = Instant::now();
        let (o, tree) = static_checks(t, work, &raw);
        if let Some(tree) = &tree {
            has_cloud_init = tree.join("usr/bin/cloud-init").exists();
            let _ = std::fs::remove_dir_all(tree);
        }
        let secs = started.elapsed().as_secs_f64() / o.len().max(1) as f64;
        for mut x in o {
            x.seconds = secs;
            on_outcome(&x);
            outcomes.push(x);
        }
    }
    let static_broken = outcomes.iter().any(|o| {
        o.failure.is_some() && (o.name.starts_with("GPT") || o.name.starts_with("partitions"))
    });
    let mut console_tail = String::new();
    let mut timing = None;
    if let Some(m) = m {
        let arm64 = gpt::read_table(&raw)
            .is_ok_and(|(_, e)| e.iter().any(|x| x.type_guid == gpt::types::ROOT_ARM64));
        let refused = if arm64 {
            Some(Outcome::fail(
                "boot",
                "boots to multi-user.target",
                "booting arm64 disks is not supported by kiln test yet (x86-64 QEMU and OVMF only); use --skip-boot".into(),
            ))
        } else if static_broken {
            Some(Outcome::skip(
                "boot",
                "boots to multi-user.target",
                "the partition table is broken",
            ))
        } else if !has_cloud_init {
            Some(Outcome::fail("boot", "boots to multi-user.target", "the image has no cloud-init, so the boot test cannot run commands in it (add cloud-init, or use kiln test --skip-boot)".into()))
        } else {
            None
        };
        if let Some(o) = refused {
            outcomes.push(o);
        } else {
            if t.tests.is_empty() {
                reporter.warn("no [[test]] commands (none in the recipe, or no manifest.json beside the image): only the boot itself is checked");
            }
            let pubkey = kiln_qemu::ssh_key(work)?;
            let commands: Vec<String> = t.tests.iter().map(|t| t.command.clone()).collect();
            let seed = kiln_qemu::make_seed(work, &pubkey, Some(&commands))?;
            let mut tries = 0;
            let r = loop {
                tries += 1;
                reporter.step(
                    Stage::Guest,
                    &format!(
                        "{} in QEMU ({}, UEFI; console in {})",
                        t.image.display(),
                        if kiln_qemu::kvm_usable() {
                            "KVM"
                        } else {
                            "TCG"
                        },
                        console.display()
                    ),
                );
                let r = kiln_qemu::boot_once(
                    &BootTest {
                        machine: m,
                        work,
                        image: &t.image,
                        seed: &seed,
                        console,
                        memory: req.memory,
                        cpus: req.cpus,
                        timeout: req.timeout,
                        tests: t.tests.len(),
                        cancel: Some(cancel),
                    },
                    reporter,
                )?;
                // QEMU's multi-threaded TCG occasionally corrupts code the
                // guest kernel is live-patching early in boot ("Oops: int3"):
                // an emulator fault, not the image's; boot again.
                if r.emulator_oops && !r.ended && tries < 3 {
                    reporter.warn("the guest kernel hit the known QEMU TCG `Oops: int3` emulation fault; booting again");
                    let _ =
                        std::fs::rename(console, t.dir.join(format!("{stem}.console.{tries}.log")));
                    continue;
                }
                break r;
            };
            let text =
                String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).to_string();
            console_tail = tail(&text, 60);
            for x in boot_outcomes(&r, &t.tests) {
                on_outcome(&x);
                outcomes.push(x);
            }
            timing = r.login_after.map(|s| BootTiming {
                to_login: s,
                total: r.seconds,
            });
        }
    }
    Ok((outcomes, console_tail, timing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh_test() -> Vec<TestEntry> {
        vec![TestEntry {
            name: "ssh".into(),
            command: "systemctl is-active ssh".into(),
            expect: Some("active".into()),
            health: false,
        }]
    }

    #[test]
    fn boot_outcomes_judge_the_state_units_and_commands() {
        let tests = ssh_test();
        let r = BootResult {
            state: Some("degraded".into()),
            failed_units: vec!["foo.service".into()],
            results: vec![CommandResult {
                status: Some(0),
                output: Some("inactive".into()),
            }],
            ended: true,
            ..Default::default()
        };
        let o = boot_outcomes(&r, &tests);
        assert!(o
            .iter()
            .any(|x| x.name == "no failed units"
                && x.failure.as_ref().unwrap().contains("foo.service")));
        let unfinished = BootResult {
            state: Some(String::new()),
            ended: true,
            ..Default::default()
        };
        let o2 = boot_outcomes(&unfinished, &[]);
        assert!(
            o2[0].failure.as_ref().unwrap().contains("did not finish"),
            "a guest that never finished booting must not pass: {o2:?}"
        );
        // "inactive" contains "active": expectations are substrings, so this passes.
        assert!(o
            .iter()
            .any(|x| x.name == "test: ssh" && x.failure.is_none()));
        let xml = junit(Path::new("d.raw"), &o, "console <tail>");
        assert!(
            xml.contains("failures=\"2\"") && xml.contains("&lt;tail&gt;"),
            "{xml}"
        );
    }

    #[test]
    fn forged_results_for_tests_that_do_not_exist_do_not_pass_the_real_ones() {
        // A console where something other than the runner printed results:
        // for test 0 and test 2 (there is one test), an undecodable status
        // for test 1, and the end marker.
        let text = "KILN-T state running\nKILN-T failed \nKILN-T rc 0 0\nKILN-T out 0 YWN0aXZl\nKILN-T rc 2 0\nKILN-T out 2 YWN0aXZl\nKILN-T rc 1 0; echo\nKILN-T end\n ttyS0 login: \n";
        let tests = ssh_test();
        let mut r = kiln_qemu::parse_console(text, tests.len());
        r.login_after = Some(1.0);
        let o = boot_outcomes(&r, &tests);
        let ssh = o.iter().find(|x| x.name == "test: ssh").unwrap();
        assert_eq!(
            ssh.failure.as_deref(),
            Some("no result read back from the console"),
            "{o:?}"
        );
        // No outcome for a test that does not exist.
        assert_eq!(o.len(), 3 + tests.len(), "{o:?}");
        assert!(o.iter().filter(|x| x.failed()).count() == 1, "{o:?}");
        // And with no tests at all, forged results change nothing.
        let r = kiln_qemu::parse_console(text, 0);
        assert!(r.results.is_empty());
        assert_eq!(boot_outcomes(&r, &[]).len(), 3);
    }

    #[test]
    fn a_missing_image_is_an_error_with_a_hint_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let req = TestRequest {
            target: d.path().join("none.raw"),
            timeout: 1,
            skip_static: false,
            skip_boot: true,
            allow_users: vec![],
            memory: 256,
            cpus: 1,
        };
        let e = test_image(&req, &kiln_model::NullReporter, &Cancel::new()).unwrap_err();
        assert!(e.to_string().contains("no disk image at"), "{e}");
        assert!(e.downcast_ref::<kiln_model::Hinted>().is_some());
    }

    #[test]
    fn requests_take_the_cli_defaults() {
        let r: TestRequest = serde_json::from_str(r#"{"target": "out/disk.raw"}"#).unwrap();
        assert_eq!((r.timeout, r.memory, r.cpus), (900, 1536, 2));
        assert!(!r.skip_boot && !r.skip_static && r.allow_users.is_empty());
        assert!(serde_json::from_str::<TestRequest>(r#"{"target": "x", "tmeout": 5}"#).is_err());
    }
}

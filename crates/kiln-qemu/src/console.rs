//! The serial-console protocol: the [`RUNNER`](crate::RUNNER) prints
//! `KILN-T` lines, the kernel and systemd print what went wrong.

/// One test command's result as read back from the console.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandResult {
    /// Its exit status; None if no (readable) `KILN-T rc` line came.
    pub status: Option<i32>,
    /// Its output (stdout and stderr, at most 3000 bytes); None if no
    /// (decodable) `KILN-T out` line came.
    pub output: Option<String>,
}

/// What the console showed.
#[derive(Clone, Debug, Default)]
pub struct BootResult {
    /// `systemctl is-system-running --wait` in the guest (`running`,
    /// `degraded`, …); empty if it gave nothing, None if never reported.
    pub state: Option<String>,
    /// Units `systemctl --failed` listed.
    pub failed_units: Vec<String>,
    /// One entry per test command, in order.
    pub results: Vec<CommandResult>,
    /// The runner's `KILN-T end` line was seen.
    pub ended: bool,
    /// Seconds from power-on to the first `login:` prompt.
    pub login_after: Option<f64>,
    /// Why the boot failed, if it did (a [`FATAL`] line, a timeout, QEMU
    /// stopping early).
    pub fatal: Option<String>,
    /// How long the whole boot took.
    pub seconds: f64,
    /// The guest hit QEMU TCG's known `Oops: int3` emulation fault: an
    /// emulator problem, not the image's; worth booting again.
    pub emulator_oops: bool,
}

/// Console text that means the boot failed: (pattern, what it means).
pub const FATAL: &[(&str, &str)] = &[
    ("Kernel panic", "kernel panic"),
    ("Oops:", "kernel Oops"),
    ("BUG: ", "kernel BUG"),
    ("You are in emergency mode", "emergency shell"),
    ("Entering emergency mode", "emergency shell"),
    ("Give root password for maintenance", "emergency shell"),
    (
        "(initramfs) ",
        "initramfs shell (the root filesystem was not found)",
    ),
    (
        "dracut Warning: Could not boot",
        "the initrd could not boot",
    ),
    (
        "Failed to start kiln-test.service",
        "the test runner could not be installed by cloud-init",
    ),
];

/// Reads the console log of a guest that runs `ntests` test commands.
/// Results for commands outside `1..=ntests` and undecodable lines are
/// ignored, so `results` always has exactly `ntests` entries. `login_after`
/// and `seconds` are left for the caller, who knows the clock.
pub fn parse_console(text: &str, ntests: usize) -> BootResult {
    let mut r = BootResult::default();
    r.results.resize(ntests, CommandResult::default());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(pos) = line.find("KILN-T ") {
            let rest = &line[pos + 7..];
            let mut it = rest.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("state"), s, _) => r.state = s.map(str::to_string),
                (Some("failed"), a, b) => {
                    r.failed_units = [a, b]
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s.split_whitespace())
                        .map(str::to_string)
                        .collect()
                }
                (Some("rc"), Some(i), Some(rc)) => {
                    if let Ok(i) = i.parse::<usize>() {
                        if (1..=ntests).contains(&i) {
                            r.results[i - 1].status = rc.trim().parse().ok();
                        }
                    }
                }
                (Some("out"), Some(i), out) => {
                    if let Ok(i) = i.parse::<usize>() {
                        if (1..=ntests).contains(&i) {
                            use base64::Engine;
                            let raw = out.unwrap_or("").trim();
                            r.results[i - 1].output = base64::engine::general_purpose::STANDARD
                                .decode(raw)
                                .ok()
                                .map(|b| String::from_utf8_lossy(&b).to_string());
                        }
                    }
                }
                (Some("end"), _, _) => r.ended = true,
                _ => {}
            }
        }
        if r.fatal.is_none() {
            for (pat, what) in FATAL {
                if line.contains(pat) {
                    r.fatal = Some(format!("{what}: {}", line.trim()));
                    if line.contains("Oops: int3") || text.contains("Oops: int3") {
                        r.emulator_oops = true;
                    }
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64;

    #[test]
    fn console_parsing_reads_results_and_fatal_lines() {
        let text = format!(
            "[  1.0] booting\r\nKILN-T state running\nKILN-T failed \nKILN-T rc 1 0\nKILN-T out 1 {}\nKILN-T rc 2 1\nKILN-T out 2 {}\nKILN-T end\n",
            b64("active\n"),
            b64("nope")
        );
        let r = parse_console(&text, 2);
        assert_eq!(r.state.as_deref(), Some("running"));
        assert!(r.failed_units.is_empty());
        assert_eq!(
            r.results[0],
            CommandResult {
                status: Some(0),
                output: Some("active\n".into())
            }
        );
        assert_eq!(r.results[1].status, Some(1));
        assert!(r.ended && r.fatal.is_none());
        let r = parse_console(
            "[ 3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
            0,
        );
        assert!(r.fatal.unwrap().starts_with("kernel panic"));
    }

    #[test]
    fn forged_result_lines_for_commands_that_do_not_exist_are_ignored() {
        let text = "KILN-T rc 0 0\nKILN-T rc 3 0\nKILN-T out 3 b2sK\nKILN-T rc 18446744073709551616 0\nKILN-T out -1 b2sK\nKILN-T rc 1 zero\nKILN-T out 1 !!!not-base64\nKILN-T end\n";
        let r = parse_console(text, 2);
        assert_eq!(r.results.len(), 2);
        assert_eq!(r.results[0], CommandResult::default());
        assert_eq!(r.results[1], CommandResult::default());
        assert!(r.ended);
    }
}

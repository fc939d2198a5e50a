//! `kiln test --upgrade OLD NEW`: an `[update]` image updating itself in
//! QEMU. OLD boots; NEW is published into a throwaway download tree that a
//! loopback server serves at the images' `[update] url`; the machine's own
//! `kiln-update.service` (systemd-sysupdate) installs NEW and reboots.
//! Passes when NEW runs with OLD kept as the fallback, or, with
//! `--expect-rollback`, when NEW fails its health gate, the machine goes
//! back to OLD by itself and does not install NEW again.
//!
//! A runner installed by the NoCloud seed (in `/etc`, so it stays across
//! the reboots) says on the serial console at every boot which version
//! runs (`KILN-U boot N version V …`); the console log is kept as
//! `NEW/upgrade.console.log`, and every boot also carries the image's own
//! `kiln: running NAME VERSION` line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use kiln_model::{Cancel, Manifest, Reporter, UpdateFacts};
use kiln_rootfs::inroot::Root;

use crate::cmd::Usage;
use crate::ui::Ui;

pub struct UpgradeArgs {
    pub old: PathBuf,
    pub new: PathBuf,
    pub expect_rollback: bool,
    /// Break the served channel this way; passes when the machine refuses it.
    pub fault: Option<Fault>,
    pub sign_key: Option<PathBuf>,
    /// NEW's release in the served channel (default: every machine).
    pub wave: Option<kiln_model::rollout::Wave>,
    /// The machine's id (32 hex digits), which places it in the wave.
    pub machine_id: Option<String>,
    /// Pass when the machine is not admitted by the wave and stays on OLD.
    pub expect_held: bool,
    /// Cut the first payload download midway; the next attempt must complete.
    pub cut_download: bool,
    pub timeout: u64,
    pub memory: u32,
    pub cpus: u32,
    pub json: bool,
}

/// How `--channel-fault` breaks the channel after it was signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// A byte of a payload changed (the UKI: uncompressed, so only the
    /// listed sha256 can tell).
    Payload,
    /// A byte of SHA256SUMS changed (a listed hash).
    Listing,
    /// A byte of the OpenPGP signature changed.
    Signature,
    /// No SHA256SUMS.gpg.
    Unsigned,
    /// SHA256SUMS signed, but with a BEST-BEFORE date already past (a
    /// replayed old listing).
    Expired,
    /// A byte of the signed ROLLOUT changed.
    Rollout,
}

/// What the session is to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Update,
    Rollback,
    Refusal,
    /// Not admitted by the wave: stays on OLD.
    Held,
}

/// The console file the session is kept in, in NEW's directory.
pub const CONSOLE: &str = "upgrade.console.log";

/// An `[update]` build: its directory, manifest and update facts.
struct Side {
    dir: PathBuf,
    manifest: Manifest,
    update: UpdateFacts,
}

fn side(dir: &Path, what: &str) -> Result<Side> {
    let manifest =
        Manifest::read_dir(dir).with_context(|| format!("{what} ({})", dir.display()))?;
    let update = manifest
        .update_facts()
        .ok_or_else(|| {
            Usage::new(
                format!(
                    "{what} ({}) is not a build of an [update] image: its manifest lists no update artifacts",
                    dir.display()
                ),
                "build an immutable recipe with [update] url = \"http://10.0.2.2:PORT/\" and --sign-key",
            )
        })?;
    Ok(Side {
        dir: dir.to_path_buf(),
        manifest,
        update,
    })
}

/// `http://10.0.2.2:PORT/PATH/` → (PORT, `/PATH/`): the address QEMU's
/// user network gives the host, which reaches a server on loopback.
fn loopback_port(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://10.0.2.2:")?;
    let (port, path) = rest.split_once('/').unwrap_or((rest, ""));
    Some((port.parse().ok()?, format!("/{path}")))
}

/// The runner the seed installs: reports each boot, starts the update on
/// OLD's first boot, reports the installed versions at the end.
fn runner(old: &str, new: &str, mode: Mode) -> String {
    format!(
        r#"#!/bin/sh
# kiln test --upgrade: says on the serial console what every boot runs.
say() {{ for t in 1 2 3 4 5 6 7 8 9 10; do printf '%s\n' "$*" > /dev/ttyS0 && break; sleep 1; done; }}
b64() {{ base64 -w0; }}
. /usr/lib/os-release
OLD='{old}'
NEW='{new}'
ROLLBACK={rollback}
SU=/usr/lib/systemd/systemd-sysupdate
mkdir -p /var/lib/kiln-upgrade
n=$(( $(cat /var/lib/kiln-upgrade/boots 2>/dev/null || echo 0) + 1 ))
echo $n > /var/lib/kiln-upgrade/boots
state=$(timeout 600 systemctl is-system-running --wait 2>/dev/null)
health=$(systemctl is-active kiln-health.service 2>/dev/null)
say "KILN-U boot $n version $IMAGE_VERSION state $state health $health"
# After the update: one byte of the new /usr slot flipped under the running
# system; dm-verity must refuse the block that holds it.
verity_check() {{
  dev=$(readlink -f "/dev/disk/by-partlabel/usr_$IMAGE_VERSION")
  at=$(grep -obUaF 'kiln-verity-canary:' "$dev" 2>/dev/null | head -n1 | cut -d: -f1)
  if [ -z "$at" ]; then say "KILN-U verity no-canary"; return; fi
  at=$((at + 3))
  b=$(dd if="$dev" bs=1 skip=$at count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
  printf "\\$(printf '%03o' $((b ^ 1)))" | dd of="$dev" bs=1 seek=$at conv=notrunc 2>/dev/null
  sync
  echo 3 > /proc/sys/vm/drop_caches
  if cat /usr/share/kiln/verity-canary >/dev/null 2>&1; then
    say "KILN-U verity accepted $dev"
  else
    say "KILN-U verity refused $dev"
  fi
}}
report() {{
  say "KILN-U list $($SU list --no-pager 2>&1 | b64)"
  say "KILN-U esp $(ls /efi/EFI/Linux 2>&1 | tr '\n' ' ')"
  say "KILN-U labels $(lsblk -rno PARTLABEL 2>/dev/null | tr '\n' ' ')"
  next=$($SU check-new 2>/dev/null)
  say "KILN-U check rc=$? new=$next"
  if [ "$IMAGE_VERSION" = "$NEW" ] && [ "$ROLLBACK" = 0 ]; then verity_check; fi
  say "KILN-U end"
  sleep 2
  systemctl poweroff
}}
if [ "$IMAGE_VERSION" = "$OLD" ] && [ ! -e /var/lib/kiln-upgrade/updated ]; then
  touch /var/lib/kiln-upgrade/updated
  sync
  say "KILN-U updating"
  systemctl start kiln-update.service
  sleep 20
  # Still here: the attempt failed or offered nothing; the next one (what
  # the timer's next run would do) completes an interrupted download.
  say "KILN-U attempt-failed $(journalctl -b -u kiln-update.service --no-pager -o cat 2>&1 | tail -n 30 | b64)"
  systemctl start kiln-update.service
  sleep 20
  say "KILN-U no-reboot $(journalctl -b -u kiln-update.service --no-pager -o cat 2>&1 | tail -n 40 | b64)"
  report
elif [ "$IMAGE_VERSION" = "$NEW" ] && [ "$ROLLBACK" = 1 ]; then
  say "KILN-U waiting for the health gate to leave $NEW"
else
  report
fi
"#,
        rollback = u8::from(mode == Mode::Rollback)
    )
}

/// One boot as the runner reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootLine {
    pub n: u32,
    pub version: String,
    pub state: String,
    pub health: String,
}

/// What the console says so far.
#[derive(Debug, Default)]
pub struct Seen {
    pub boots: Vec<BootLine>,
    pub updating: bool,
    /// The first attempt did not reboot: what kiln-update.service said.
    pub attempt_failed: Option<String>,
    pub no_reboot: Option<String>,
    pub list: Option<String>,
    pub esp: Option<String>,
    pub check: Option<String>,
    /// A byte flipped in the new /usr slot: `refused` (by dm-verity),
    /// `accepted`, or `no-canary`.
    pub verity: Option<String>,
    pub ended: bool,
    /// The image's own `kiln: running NAME VERSION` lines.
    pub running: Vec<String>,
}

fn unb64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default()
}

impl Seen {
    /// The version of every boot, in order (`kiln: running NAME VERSION`).
    pub fn versions(&self) -> Vec<&str> {
        self.running
            .iter()
            .filter_map(|r| r.rsplit(' ').next())
            .collect()
    }
}

pub fn parse(console: &str) -> Seen {
    let mut s = Seen::default();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(i) = line.find("kiln: running ") {
            // Kernel messages can run on into the same console line
            // (`kiln: running img 1[   23.7] audit: …`): the name and the
            // version are the characters they can be made of.
            let part = |t: &str| -> String {
                t.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ".~^+-_".contains(*c))
                    .collect()
            };
            let mut w = line[i + 14..].split_whitespace();
            let (name, version) = (part(w.next().unwrap_or("")), w.next().map(part));
            if let Some(v) = version.filter(|v| !v.is_empty() && !name.is_empty()) {
                s.running.push(format!("{name} {v}"));
            }
        }
        // The getty's terminal queries can precede it on the same line.
        let Some(rest) = line.find("KILN-U ").map(|i| &line[i + 7..]) else {
            continue;
        };
        let (kind, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "boot" => {
                let w: Vec<&str> = arg.split(' ').collect();
                let field = |k: &str| {
                    w.iter()
                        .position(|x| *x == k)
                        .and_then(|i| w.get(i + 1))
                        .map(|x| x.to_string())
                        .unwrap_or_default()
                };
                s.boots.push(BootLine {
                    n: w.first().and_then(|x| x.parse().ok()).unwrap_or(0),
                    version: field("version"),
                    state: field("state"),
                    health: field("health"),
                });
            }
            "updating" => s.updating = true,
            "attempt-failed" => s.attempt_failed = Some(unb64(arg)),
            "no-reboot" => s.no_reboot = Some(unb64(arg)),
            "list" => s.list = Some(unb64(arg)),
            "esp" => s.esp = Some(arg.to_string()),
            "check" => s.check = Some(arg.to_string()),
            "verity" => s.verity = arg.split(' ').next().map(str::to_string),
            "end" => s.ended = true,
            _ => {}
        }
    }
    s
}

/// `systemd-sysupdate list`'s table: (version, assessment) of each
/// installed version (`current` is the running one).
pub fn installed(list: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in list.lines() {
        let w: Vec<&str> = line
            .split_whitespace()
            .filter(|x| *x != "●" && *x != "*")
            .collect();
        if w.first() == Some(&"VERSION") {
            in_table = true;
            continue;
        }
        if in_table && w.len() >= 2 && w[1] == "✓" {
            if let Some(a) = w
                .last()
                .filter(|a| a.chars().all(|c| c.is_ascii_alphabetic()))
            {
                out.push((w[0].to_string(), a.to_string()));
            }
        }
    }
    out
}

/// The verdict on what was seen: Some(Ok) passed, Some(Err) failed, None
/// not decided yet.
pub fn judge(s: &Seen, old: &str, new: &str, mode: Mode) -> Option<Result<String, String>> {
    // Undecided until the runner's end, except that a failed update ends
    // an update or rollback test at once.
    let failed_early = s.no_reboot.is_some() && !matches!(mode, Mode::Refusal | Mode::Held);
    if !s.ended && !failed_early {
        return None;
    }
    // Every boot, from the image's own line (a boot that fails its health
    // gate reboots before the runner has reported it).
    let versions = s.versions();
    let seq = versions.join(" → ");
    let last = versions.last().copied();
    let ran_new = versions.contains(&new);
    if mode == Mode::Held {
        return Some(match &s.no_reboot {
            Some(log)
                if !ran_new
                    && versions.iter().all(|v| *v == old)
                    && log.contains("kiln-update: target none")
                    && !log.contains("REFUSED") =>
            {
                Ok(format!(
                    "boots: {seq}; the wave does not admit this machine yet and it stays on {old}; its update gate said:\n{log}"
                ))
            }
            Some(log) => Err(format!(
                "boots: {seq}; the machine was to be held back by the wave on {old}; its update gate said:\n{log}"
            )),
            None => Err(format!(
                "boots: {seq}; the machine was to be held back by the wave, but it updated"
            )),
        });
    }
    if mode == Mode::Refusal {
        return Some(match &s.no_reboot {
            Some(log) if !ran_new && versions.iter().all(|v| *v == old) => Ok(format!(
                "boots: {seq}; {old} refused the broken channel and stays; kiln-update.service said:\n{log}"
            )),
            _ => Err(format!(
                "boots: {seq}; the machine was to refuse the broken channel and stay on {old}"
            )),
        });
    }
    if let Some(log) = &s.no_reboot {
        return Some(Err(format!(
            "{old} did not update itself (no reboot into {new}); kiln-update.service said:\n{log}"
        )));
    }
    if mode == Mode::Update {
        return Some(match last {
            Some(v) if v == new && s.updating => {
                let list = s.list.as_deref().unwrap_or("");
                let table = installed(list);
                let has = |v: &str, what: &str| table.iter().any(|(x, a)| x == v && a == what);
                if !(has(new, "current") && has(old, "installed")) {
                    Err(format!(
                        "boots: {seq}; {new} runs, but {old} is no longer installed:\n{list}"
                    ))
                } else if s.verity.as_deref() == Some("accepted") {
                    Err(format!(
                        "boots: {seq}; {new} runs, but a byte flipped in its /usr slot was read back: dm-verity did not refuse it"
                    ))
                } else if s.verity.as_deref() == Some("refused") {
                    Ok(format!(
                        "boots: {seq}; {new} runs, {old} is kept as the fallback, and a byte flipped in the new /usr slot is refused by dm-verity"
                    ))
                } else {
                    Ok(format!(
                        "boots: {seq}; {new} runs, {old} is kept as the fallback"
                    ))
                }
            }
            _ => Err(format!("boots: {seq}; the machine does not run {new}")),
        });
    }
    Some(match last {
        Some(v) if v == old && ran_new && versions.len() >= 3 => {
            // systemd-sysupdate check-new exits 0 when it would install something.
            let check = s.check.as_deref().unwrap_or("");
            if !check.is_empty() && !check.starts_with("rc=0 ") {
                Ok(format!(
                    "boots: {seq}; {new} failed its health gate and the machine went back to {old} by itself, which does not install {new} again"
                ))
            } else {
                Err(format!(
                    "boots: {seq}; back on {old}, but it would install {new} again:\n{check}"
                ))
            }
        }
        _ => Err(format!(
            "boots: {seq}; expected {old}, then {new} failing its health gate, then {old} again"
        )),
    })
}

/// Breaks the signed channel in `dir` (channel `channel` of `tree`) the way
/// `f` says.
fn break_channel(
    tree: &Path,
    channel: &str,
    dir: &Path,
    f: Fault,
    key: &kiln_attest::SigningKey,
) -> Result<()> {
    let flip = |p: &Path, at: usize| -> Result<()> {
        let mut b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let i = at.min(b.len().saturating_sub(1));
        b[i] ^= 0x01;
        // A new file: the pool's hard link keeps the good bytes.
        std::fs::remove_file(p)?;
        std::fs::write(p, b)?;
        Ok(())
    };
    match f {
        Fault::Payload => {
            let uki = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "efi"))
                .context("the channel has no UKI")?;
            let len = std::fs::metadata(&uki)?.len() as usize;
            flip(&uki, len / 2)?;
        }
        Fault::Listing => flip(&dir.join(kiln_publish::sysupdate::LISTING), 3)?,
        Fault::Signature => {
            let sig = dir.join(kiln_publish::sysupdate::SIGNATURE);
            let len = std::fs::metadata(&sig)?.len() as usize;
            flip(&sig, len - 5)?;
        }
        Fault::Unsigned => std::fs::remove_file(dir.join(kiln_publish::sysupdate::SIGNATURE))?,
        Fault::Rollout => {
            let p = dir.join(kiln_model::rollout::FILE);
            let len = std::fs::metadata(&p)?.len() as usize;
            flip(&p, len - 3)?;
        }
        Fault::Expired => {
            // Properly signed, but its BEST-BEFORE day is today: what an
            // attacker replaying a listing of last month would serve.
            let text = std::fs::read_to_string(dir.join(kiln_publish::sysupdate::LISTING))?;
            let mut l =
                kiln_publish::sysupdate::parse_listing(&text).map_err(|e| anyhow::anyhow!(e))?;
            let now = kiln_publish::unix_now();
            l.best_before = Some(kiln_publish::sysupdate::best_before(now, 0));
            kiln_publish::sysupdate::write_signed(
                &Root::open(tree)?,
                channel,
                &l,
                key,
                now - 40 * 86_400,
            )?;
        }
    }
    Ok(())
}

/// A static server for the tree, on loopback: GET and HEAD, plain file
/// names only, nothing followed out of the tree.
struct Server {
    /// Payload downloads cut midway so far.
    cuts: Arc<std::sync::atomic::AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// With `cut`, the first GET of a payload (`*.raw.xz`) gets its headers
/// and half its bytes, then the connection is closed: the server going
/// away mid-download.
fn serve(tree: &Path, port: u16, prefix: String, cut: bool) -> Result<Server> {
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        Usage::new(
            format!("cannot listen on 127.0.0.1:{port} for the update channel: {e}"),
            "the port comes from the images' [update] url; stop what uses it, or build with another port",
        )
    })?;
    listener.set_nonblocking(true)?;
    let root = Arc::new(Root::open(tree)?);
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let s = stop.clone();
    let c = cuts.clone();
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let root = root.clone();
                    let prefix = prefix.clone();
                    let cuts = c.clone();
                    std::thread::spawn(move || {
                        let _ = answer(conn, &root, &prefix, cut.then_some(&*cuts));
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    Ok(Server {
        cuts,
        stop,
        thread: Some(thread),
    })
}

fn answer(
    conn: TcpStream,
    root: &Root,
    prefix: &str,
    cuts: Option<&std::sync::atomic::AtomicU32>,
) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.by_ref().take(8192).read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if reader.by_ref().take(8192).read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut w = conn;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let rel = target
        .strip_prefix(prefix)
        .filter(|r| {
            !r.is_empty()
                && r.split('/').all(|p| !p.is_empty() && !p.starts_with('.'))
                && r.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-+~^/".contains(&c))
        })
        .map(str::to_string);
    let file = rel.as_ref().and_then(|r| {
        root.metadata(r)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|_| root.open_file(r).ok())
    });
    let Some(mut f) = file.filter(|_| method == "GET" || method == "HEAD") else {
        return w.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let len = f.metadata()?.len();
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )?;
    if method == "GET" {
        let payload = rel.as_deref().is_some_and(|r| r.ends_with(".raw.xz"));
        if let Some(c) = cuts.filter(|_| payload) {
            if c.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                std::io::copy(&mut (&mut f).take(len / 2), &mut w)?;
                w.flush()?;
                // Gone: no more bytes, the connection closed.
                return w.shutdown(std::net::Shutdown::Both);
            }
        }
        std::io::copy(&mut f, &mut w)?;
    }
    w.flush()
}

/// `kiln test --upgrade OLD NEW [--expect-rollback]`.
pub fn cmd_upgrade(
    ui: &Ui,
    reporter: &dyn Reporter,
    cancel: &Cancel,
    a: &UpgradeArgs,
) -> Result<()> {
    let old = side(&a.old, "OLD")?;
    let new = side(&a.new, "NEW")?;
    let (ov, nv) = (&old.update.version, &new.update.version);
    if old.manifest.image != new.manifest.image {
        return Err(Usage::new(
            format!(
                "OLD is {} and NEW is {}: a machine updates only to versions of its own image",
                old.manifest.image, new.manifest.image
            ),
            "give two builds of the same recipe",
        )
        .into());
    }
    if kiln_model::sdversion::compare(nv, ov) != std::cmp::Ordering::Greater {
        return Err(Usage::new(
            format!("NEW's version {nv} is not newer than OLD's {ov} (as systemd orders versions)"),
            "build NEW with a higher --image-version",
        )
        .into());
    }
    if (&old.update.url, &old.update.channel) != (&new.update.url, &new.update.channel)
        || old.update.key_fingerprint != new.update.key_fingerprint
    {
        return Err(Usage::new(
            "OLD and NEW follow different channels or trust different keys",
            "build both from the same recipe and key",
        )
        .into());
    }
    let key_path = a.sign_key.as_deref().ok_or_else(|| {
        Usage::new(
            "kiln test --upgrade signs the channel it serves, but no key was given",
            "give --sign-key KEY.pem (or KILN_SIGN_KEY): the key the images were built with",
        )
    })?;
    let key = kiln_attest::SigningKey::from_pem_file(key_path)?;
    let fpr = kiln_attest::openpgp::fingerprint_hex(&key.verifying_key());
    if fpr != old.update.key_fingerprint {
        return Err(Usage::new(
            format!(
                "the images trust key {}, but --sign-key is {fpr}: the machine would refuse the channel",
                old.update.key_fingerprint
            ),
            "give the key the images were built with",
        )
        .into());
    }
    let (port, prefix) = loopback_port(&old.update.url).ok_or_else(|| {
        Usage::new(
            format!(
                "the images update from {}, which a test cannot serve",
                old.update.url
            ),
            "build the test images with [update] url = \"http://10.0.2.2:PORT/\" (QEMU's address of this host; the channel is served on 127.0.0.1:PORT)",
        )
    })?;
    let disk = old.dir.join("disk.raw");
    if !disk.is_file() {
        return Err(Usage::new(
            format!("OLD ({}) has no disk.raw", old.dir.display()),
            "give the output directory of a disk build",
        )
        .into());
    }
    let machine = kiln_qemu::machine()?;
    let work = tempfile::Builder::new().prefix("kiln-upgrade.").tempdir()?;
    let tree = work.path().join("tree");
    let mut build = kiln_publish::source::Build::open(&new.dir, &|m| {
        reporter.step(kiln_model::Stage::Publish, m)
    })?;
    // The machine needs only the update files (the throwaway tree need not
    // hold a copy of the disks).
    build.files.retain(|f| {
        f.format == Some(kiln_model::Format::Update)
            || f.role == kiln_publish::source::Role::Manifest
    });
    let published = kiln_publish::tree::publish(
        &tree,
        &[&build],
        &kiln_publish::tree::TreeOptions {
            channel: &new.update.channel,
            key: &key,
            valid_for: 7 * 86_400,
            now: kiln_publish::unix_now(),
            base_url: None,
            keep: 3,
            progress: &|m| reporter.step(kiln_model::Stage::Publish, m),
        },
    )?;
    let listing = published
        .sysupdate
        .as_ref()
        .map(|s| s.dir.clone())
        .unwrap_or_default();
    // NEW enters the served channel's rollout with the wave asked for.
    let wave = a.wave.unwrap_or(kiln_model::rollout::Wave {
        start: kiln_model::rollout::ALL,
        duration: 0,
    });
    let released = kiln_publish::sysupdate::release(
        &Root::open(&tree)?,
        &kiln_publish::sysupdate::ReleaseRequest {
            channel: &new.update.channel,
            image: &new.manifest.image,
            version: nv,
            action: kiln_publish::sysupdate::Action::Wave(wave),
            barrier: None,
            key: &key,
            now: kiln_publish::unix_now(),
            valid_for: 7 * 86_400,
        },
    )
    .map_err(crate::release::release_error)?;
    let place = a
        .machine_id
        .as_deref()
        .map(|m| kiln_model::rollout::place(m, &new.update.channel));
    ui.status(
        "Released",
        &format!(
            "{nv} to {} of machines{}",
            kiln_model::rollout::percent(released.release.start),
            match place {
                Some(p) => format!(
                    "; this machine ({}) is at {}",
                    a.machine_id.as_deref().unwrap_or(""),
                    kiln_model::rollout::percent(p)
                ),
                None => String::new(),
            }
        ),
    );
    let mode = match (a.expect_rollback, a.fault, a.expect_held) {
        (_, Some(f), _) => {
            break_channel(&tree, &new.update.channel, &tree.join(&listing), f, &key)?;
            ui.status(
                "Broken",
                &format!("the served channel: {f:?} changed after signing"),
            );
            Mode::Refusal
        }
        (true, None, _) => Mode::Rollback,
        (false, None, true) => Mode::Held,
        (false, None, false) => Mode::Update,
    };
    let server = serve(&tree, port, prefix.clone(), a.cut_download)?;
    ui.status(
        "Serving",
        &format!("{nv} at http://10.0.2.2:{port}{prefix}{listing}/ (127.0.0.1:{port} here)"),
    );
    let overlay = kiln_qemu::overlay(work.path(), &disk, kiln_qemu::virtual_size(&disk)?)?;
    let pubkey = kiln_qemu::ssh_key(work.path())?;
    let mut ud = kiln_qemu::user_data_head(&pubkey)?;
    ud.push_str(&kiln_qemu::write_files(&[
        (
            "/etc/kiln-upgrade/runner",
            "0755",
            runner(ov, nv, mode),
        ),
        (
            "/etc/systemd/system/kiln-upgrade.service",
            "0644",
            "[Unit]\nDescription=kiln test --upgrade runner\nAfter=multi-user.target\n\n[Service]\nType=simple\nExecStart=/bin/sh /etc/kiln-upgrade/runner\n\n[Install]\nWantedBy=multi-user.target\n".into(),
        ),
    ]));
    ud.push_str("runcmd:\n  - [systemctl, daemon-reload]\n  - [systemctl, enable, kiln-upgrade.service]\n  - [systemctl, start, --no-block, kiln-upgrade.service]\n");
    let seed = kiln_qemu::seed_from_user_data(work.path(), &ud)?;
    let console = new.dir.join(CONSOLE);
    ui.status(
        "Booting",
        &format!(
            "{} {ov} in QEMU; it is to update itself to {nv}{}",
            old.manifest.image,
            if a.expect_rollback {
                ", fail its health gate and go back"
            } else {
                ""
            }
        ),
    );
    // systemd takes the machine id from this credential on first boot.
    let extra: Vec<String> = match &a.machine_id {
        Some(m) => vec![
            "-smbios".into(),
            format!("type=11,value=io.systemd.credential:system.machine_id={m}"),
        ],
        None => Vec::new(),
    };
    let mut shown = 0;
    let started = std::time::Instant::now();
    // Seconds into the session: the update started, the new version runs.
    let (mut update_at, mut new_at) = (None::<f64>, None::<f64>);
    let (verdict, seconds) = kiln_qemu::run_session(
        &kiln_qemu::Session {
            machine: &machine,
            work: work.path(),
            disk: &overlay,
            seed: &seed,
            console: &console,
            memory: a.memory,
            cpus: a.cpus,
            timeout: a.timeout,
            cancel: Some(cancel),
            extra: &extra,
        },
        reporter,
        &mut |text| {
            let seen = parse(text);
            let t = started.elapsed().as_secs_f64();
            if seen.updating && update_at.is_none() {
                update_at = Some(t);
            }
            if update_at.is_some()
                && new_at.is_none()
                && seen.running.iter().any(|r| r.ends_with(&format!(" {nv}")))
            {
                new_at = Some(t);
            }
            for b in seen.boots.iter().skip(shown) {
                ui.status(
                    "Boot",
                    &format!(
                        "{}: {} {} ({}, health gate {})",
                        b.n,
                        old.manifest.image,
                        b.version,
                        b.state,
                        if b.health.is_empty() { "-" } else { &b.health }
                    ),
                );
            }
            shown = seen.boots.len();
            match judge(&seen, ov, nv, mode) {
                None => kiln_qemu::Watch::Continue,
                Some(Ok(_)) => kiln_qemu::Watch::Done,
                Some(Err(e)) => kiln_qemu::Watch::Failed(e),
            }
        },
    )?;
    let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).to_string();
    let seen = parse(&text);
    let cuts = server.cuts.load(Ordering::SeqCst);
    drop(server);
    let outcome = match (&verdict, judge(&seen, ov, nv, mode)) {
        (kiln_qemu::Watch::Done, Some(Ok(m))) => Ok(m),
        (kiln_qemu::Watch::Failed(e), _) => Err(e.clone()),
        (_, Some(Err(e))) => Err(e),
        _ => Err("the session ended undecided".to_string()),
    }
    .and_then(|m| {
        if !a.cut_download {
            return Ok(m);
        }
        match (&seen.attempt_failed, cuts) {
            (Some(log), _) if cuts > 0 => Ok(format!(
                "{m}; the first download was cut midway and refused, the next attempt completed (the first attempt said:\n{log})"
            )),
            (Some(_), _) | (None, 0) => Err(format!("{m}; but no payload download was cut")),
            (None, _) => Err(format!(
                "{m}; but the cut download did not make the first attempt fail"
            )),
        }
    });
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image": old.manifest.image,
                "old": ov,
                "new": nv,
                "expect-rollback": a.expect_rollback,
                "channel-fault": a.fault.map(|f| format!("{f:?}").to_lowercase()),
                "expect-held": a.expect_held,
                "wave": {
                    "start": wave.start as f64 / 100.0,
                    "duration-seconds": wave.duration,
                },
                "machine-id": a.machine_id,
                "place": place.map(|p| p as f64 / 100.0),
                "cut-download": a.cut_download,
                "downloads-cut": cuts,
                "first-attempt-failed": seen.attempt_failed.is_some(),
                "passed": outcome.is_ok(),
                "message": match &outcome { Ok(m) | Err(m) => m },
                "versions": seen.versions(),
                "boots": seen.boots.iter().map(|b| serde_json::json!({
                    "boot": b.n, "version": b.version, "state": b.state, "health": b.health,
                })).collect::<Vec<_>>(),
                "running": seen.running,
                "installed": seen.list,
                "verity-after-update": seen.verity,
                "console": console.display().to_string(),
                "seconds": seconds,
                "update-to-new-seconds": update_at.zip(new_at).map(|(a, b)| b - a),
            }))?
        );
    }
    ui.status("Console", &console.display().to_string());
    if let (Some(a), Some(b)) = (update_at, new_at) {
        ui.status(
            "Timing",
            &format!("{:.0}s from the update starting to {nv} running", b - a),
        );
    }
    match outcome {
        Ok(m) => {
            ui.status("Passed", &format!("{m} ({seconds:.0}s)"));
            Ok(())
        }
        Err(e) => {
            errln!(
                "--- last console lines ({}) ---\n{}\n---",
                console.display(),
                kiln_check::tail(&text, 30)
            );
            Err(anyhow::anyhow!("upgrade test failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_is_valid_shell() {
        for mode in [Mode::Update, Mode::Rollback, Mode::Refusal, Mode::Held] {
            let d = tempfile::tempdir().unwrap();
            let f = d.path().join("runner");
            let text = runner("1", "2", mode);
            std::fs::write(&f, &text).unwrap();
            let o = std::process::Command::new("sh")
                .arg("-n")
                .arg(&f)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(text.contains(r#"printf "\\$(printf '%03o'"#), "{text}");
        }
    }

    #[test]
    fn the_server_serves_plain_names_only_and_can_go_away_mid_download() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sysupdate/stable")).unwrap();
        let body = vec![7u8; 10_000];
        let name = "sysupdate/stable/img_2_U.usr-x86-64.raw.xz";
        std::fs::write(d.path().join(name), &body).unwrap();
        std::fs::write(d.path().join("sysupdate/stable/SHA256SUMS"), b"x").unwrap();
        std::fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("sysupdate/stable/link")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = serve(d.path(), port, "/img/".into(), true).unwrap();
        let get = |path: &str| -> (String, usize) {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out).to_string();
            let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            (head.lines().next().unwrap_or("").to_string(), rest.len())
        };
        // The first payload download stops halfway; the next is whole.
        let (status, n) = get(&format!("/img/{name}"));
        assert!(status.contains("200"), "{status}");
        assert_eq!(n, 5_000);
        assert_eq!(get(&format!("/img/{name}")).1, 10_000);
        assert_eq!(server.cuts.load(Ordering::SeqCst), 1);
        // Listings are never cut.
        assert_eq!(get("/img/sysupdate/stable/SHA256SUMS").1, 1);
        for bad in [
            "/img/../secret",
            "/img/sysupdate/../secret",
            "/img/sysupdate/stable/link",
            "/img/sysupdate/stable/.x",
            "/secret",
            "/img/sysupdate/stable/%2e%2e/secret",
        ] {
            assert!(get(bad).0.contains("404"), "{bad}");
        }
    }

    #[test]
    fn the_console_decides_the_verdict() {
        let mut c = String::from("kiln: running img 1\nKILN-U boot 1 version 1 state running health active\nKILN-U updating\n");
        assert!(judge(&parse(&c), "1", "2", Mode::Update).is_none());
        c.push_str("kiln: running img 2\nKILN-U boot 2 version 2 state running health active\n");
        let list = base64::engine::general_purpose::STANDARD.encode(
            "gpg: key 1b4fa83d\n  VERSION INSTALLED AVAILABLE ASSESSMENT\n\u{25cf} 2           \u{2713}         \u{2713}     current\n  1           \u{2713}               installed\n",
        );
        c.push_str(&format!("KILN-U list {list}\nKILN-U end\n"));
        let s = parse(&c);
        assert_eq!(s.running, ["img 1", "img 2"]);
        // A kernel message run on into the same line does not count.
        let joined =
            parse("[  23.6] sh[510]: kiln: running img 1[   23.7] audit: type=1130 res=success'\n");
        assert_eq!(joined.versions(), ["1"]);
        assert!(judge(&s, "1", "2", Mode::Update).unwrap().is_ok());
        let refused = c.replace("KILN-U end", "KILN-U verity refused /dev/vda4\nKILN-U end");
        let m = judge(&parse(&refused), "1", "2", Mode::Update)
            .unwrap()
            .unwrap();
        assert!(m.contains("refused by dm-verity"), "{m}");
        let accepted = c.replace("KILN-U end", "KILN-U verity accepted /dev/vda4\nKILN-U end");
        assert!(judge(&parse(&accepted), "1", "2", Mode::Update)
            .unwrap()
            .is_err());
        // 1 gone from the table (the "1" in the key id does not count).
        let gone = c.replace(
            &list,
            &base64::engine::general_purpose::STANDARD.encode(
                "gpg: key 1b4fa83d\n  VERSION INSTALLED AVAILABLE ASSESSMENT\n  2 \u{2713} \u{2713} current\n",
            ),
        );
        assert!(judge(&parse(&gone), "1", "2", Mode::Update)
            .unwrap()
            .is_err());
        // The same boots pass neither a rollback nor a refusal test.
        assert!(judge(&s, "1", "2", Mode::Rollback).unwrap().is_err());
        assert!(judge(&s, "1", "2", Mode::Refusal).unwrap().is_err());
        let r = "kiln: running img 2\nKILN-U boot 1 version 2 state running health active\nKILN-U updating\n\
                 [   39.6] sh[509]: kiln: running img 3\nkiln-health: FAILED\n[   40.1] sh[509]: kiln: running img 3\n\
                 kiln: running img 2\nKILN-U boot 2 version 2 state running health active\nKILN-U check rc=1 new=\nKILN-U end\n";
        assert!(judge(&parse(r), "2", "3", Mode::Rollback).unwrap().is_ok());
        let again = r.replace("rc=1 new=", "rc=0 new=3");
        assert!(judge(&parse(&again), "2", "3", Mode::Rollback)
            .unwrap()
            .is_err());
        let failed = format!(
            "kiln: running img 1\nKILN-U boot 1 version 1 state running health active\nKILN-U updating\nKILN-U no-reboot {}\n",
            base64::engine::general_purpose::STANDARD.encode("Signature verification failed")
        );
        let e = judge(&parse(&failed), "1", "2", Mode::Update)
            .unwrap()
            .unwrap_err();
        assert!(e.contains("Signature verification failed"), "{e}");
        // A refusal passes only when the machine also stays on OLD to the end.
        assert!(judge(&parse(&failed), "1", "2", Mode::Refusal).is_none());
        let refused =
            format!("{failed}KILN-U boot 2 version 1 state running health active\nKILN-U end\n");
        assert!(judge(&parse(&refused), "1", "2", Mode::Refusal)
            .unwrap()
            .is_ok());
        // Held back by the wave: stays on OLD, the gate said so (and
        // refused nothing).
        let gate = |said: &str| {
            format!(
                "kiln: running img 1\nKILN-U boot 1 version 1 state running health active\nKILN-U updating\nKILN-U attempt-failed {}\nKILN-U no-reboot {}\nKILN-U end\n",
                base64::engine::general_purpose::STANDARD.encode(said),
                base64::engine::general_purpose::STANDARD.encode(said)
            )
        };
        let held = gate("kiln-update: 2: not admitted yet (wave at 50.00% active, this machine at 71.20%)\nkiln-update: target none\n");
        let s = parse(&held);
        assert!(s.attempt_failed.is_some());
        assert!(judge(&s, "1", "2", Mode::Held).unwrap().is_ok());
        let refused_gate = gate(
            "kiln-update: REFUSED: SHA256SUMS expired on 2026-12-07\nkiln-update: target none\n",
        );
        assert!(judge(&parse(&refused_gate), "1", "2", Mode::Held)
            .unwrap()
            .is_err());
        assert!(judge(&parse(&refused_gate), "1", "2", Mode::Refusal)
            .unwrap()
            .is_ok());
        // An updated machine is not held.
        assert!(judge(&parse(&c), "1", "2", Mode::Held).unwrap().is_err());
        assert_eq!(
            loopback_port("http://10.0.2.2:8470/"),
            Some((8470, "/".into()))
        );
        assert_eq!(
            loopback_port("http://10.0.2.2:80/img/"),
            Some((80, "/img/".into()))
        );
        assert_eq!(loopback_port("https://images.example.org/"), None);
    }
}

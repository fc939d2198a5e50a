//! An immutable image that updates itself (`[update]`), with systemd's own
//! tools: what goes into the image before `/usr` is sealed, and the split
//! update artifacts written beside the disk.
//!
//! In the image (all under the verity-protected `/usr`):
//! - `/usr/lib/sysupdate.d/{10-usr,20-usr-verity,90-uki}.transfer`: the
//!   `/usr` image and its hash tree go into the free `/usr` slot pair (GPT
//!   labels `usr_VERSION`, `usr-verity_VERSION`, partition UUIDs from the
//!   file names, i.e. from the verity root hash), then the UKI into
//!   `$BOOT/EFI/Linux` with boot counting (`+TRIES-0`); the UKI is named
//!   last, so it is installed only after both payloads are in place.
//! - `/usr/lib/repart.d/1[0-3]-usr*.conf`: the A and B slots. A Kiln disk
//!   is made with both (`[update]` refuses `ab-slots = false`), so the
//!   booted system's systemd-repart reuses them; it would create a missing
//!   one (`Label=_empty`) only in space left after the root, which the
//!   initrd's systemd-repart (built before these files exist) has already
//!   grown into the rest of the disk.
//! - `/usr/lib/systemd/import-pubring.gpg`: only the image's own signing
//!   key (Debian's file, which trusts other distributions' keys, is
//!   diverted to `import-pubring.gpg.distrib`).
//! - `kiln-health.service`, ordered before `boot-complete.target`: no
//!   failed units and every `[[test]] health = true` check passes, or the
//!   boot is not blessed (a counted boot reboots, and after its tries
//!   systemd-boot is back on the previous version).
//! - `kiln-update.service` + `.timer`: the update gate `/usr/lib/kiln/update`
//!   fetches the channel's `SHA256SUMS`, checks its signature (gpgv, the
//!   image's keyring) and its `BEST-BEFORE` date, reads the staged
//!   `ROLLOUT` it lists (`kiln_model::rollout`) and, when this machine is
//!   admitted to a newer release, runs `systemd-sysupdate --reboot update
//!   VERSION`.
//!
//! Beside the disk, in `OUT/update/`: `NAME_VERSION_UUID.usr-ARCH.raw.xz`,
//! `NAME_VERSION_UUID.usr-ARCH-verity.raw.xz` and `NAME_VERSION_ARCH.efi`,
//! which `kiln publish` lists in the channel's signed `SHA256SUMS`.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use kiln_recipe::{TestEntry, Update};
use kiln_rootfs::inroot::Root;

/// The sub-directory of the output directory that holds the update files.
pub const UPDATE_DIR: &str = "update";

/// Everything the image's update files are made from.
pub struct UpdateSpec<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// DPS architecture name (`x86-64`, `arm64`).
    pub dps: &'a str,
    pub update: &'a Update,
    pub health: Vec<&'a TestEntry>,
    /// The signing key as a binary OpenPGP keyring.
    pub keyring: &'a [u8],
    /// Sizes of the `/usr` and verity slots (both slots alike).
    pub usr_slot: u64,
    pub verity_slot: u64,
}

/// The names of a version's update files.
pub struct PayloadNames {
    pub usr: String,
    pub verity: String,
    pub uki: String,
}

pub fn payload_names(
    name: &str,
    version: &str,
    dps: &str,
    usr_uuid: &str,
    verity_uuid: &str,
) -> PayloadNames {
    PayloadNames {
        usr: format!("{name}_{version}_{usr_uuid}.usr-{dps}.raw.xz"),
        verity: format!("{name}_{version}_{verity_uuid}.usr-{dps}-verity.raw.xz"),
        uki: format!("{name}_{version}_{dps}.efi"),
    }
}

/// The GPT label of a `/usr` slot holding `version` (what the transfer's
/// target pattern matches).
pub fn usr_label(version: &str) -> String {
    format!("usr_{version}")
}

pub fn verity_label(version: &str) -> String {
    format!("usr-verity_{version}")
}

/// The UKI's file name on the ESP.
pub fn uki_file(name: &str, version: &str) -> String {
    format!("{name}_{version}.efi")
}

/// Where the machine reads its channel.
pub fn channel_url(u: &Update) -> String {
    format!("{}sysupdate/{}/", u.url, u.channel)
}

const HEADER: &str =
    "# Written by kiln ([update] of the recipe): do not edit, the image is immutable.\n";

/// The files written into the image: (path in the root, content, mode).
pub fn image_files(s: &UpdateSpec) -> Vec<(String, Vec<u8>, u32)> {
    let url = channel_url(s.update);
    let (name, dps) = (s.name, s.dps);
    let mut f: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut add = |path: &str, text: String, mode: u32| f.push((path.into(), text.into(), mode));
    add(
        "usr/lib/sysupdate.d/10-usr.transfer",
        format!(
            "{HEADER}[Transfer]\nProtectVersion=%A\nVerify=yes\n\n[Source]\nType=url-file\nPath={url}\nMatchPattern={name}_@v_@u.usr-{dps}.raw.xz\n\n[Target]\nType=partition\nPath=auto\nMatchPattern=usr_@v\nMatchPartitionType=usr\nPartitionFlags=0\nReadOnly=1\nInstancesMax=2\n"
        ),
        0o644,
    );
    add(
        "usr/lib/sysupdate.d/20-usr-verity.transfer",
        format!(
            "{HEADER}[Transfer]\nProtectVersion=%A\nVerify=yes\n\n[Source]\nType=url-file\nPath={url}\nMatchPattern={name}_@v_@u.usr-{dps}-verity.raw.xz\n\n[Target]\nType=partition\nPath=auto\nMatchPattern=usr-verity_@v\nMatchPartitionType=usr-verity\nPartitionFlags=0\nReadOnly=1\nInstancesMax=2\n"
        ),
        0o644,
    );
    add(
        "usr/lib/sysupdate.d/90-uki.transfer",
        format!(
            "{HEADER}# Installed last: a version boots only when its /usr is complete.\n[Transfer]\nProtectVersion=%A\nVerify=yes\n\n[Source]\nType=url-file\nPath={url}\nMatchPattern={name}_@v_{dps}.efi\n\n[Target]\nType=regular-file\nPath=/EFI/Linux\nPathRelativeTo=boot\nMatchPattern={name}_@v+@l-@d.efi {name}_@v+@l.efi {name}_@v.efi\nMode=0444\nTriesLeft={}\nTriesDone=0\nInstancesMax=2\n",
            s.update.tries
        ),
        0o644,
    );
    // The A and B slot pairs, matched in file-name order against the
    // disk's partitions of each type: reused as they are (Label= and the
    // flags only apply to a partition systemd-repart creates).
    for (file, ty, size, label) in [
        ("10-usr-a.conf", "usr", s.usr_slot, None),
        ("11-usr-verity-a.conf", "usr-verity", s.verity_slot, None),
        ("12-usr-b.conf", "usr", s.usr_slot, Some("_empty")),
        (
            "13-usr-verity-b.conf",
            "usr-verity",
            s.verity_slot,
            Some("_empty"),
        ),
    ] {
        let mut t =
            format!("{HEADER}[Partition]\nType={ty}\nSizeMinBytes={size}\nSizeMaxBytes={size}\n");
        if let Some(l) = label {
            t.push_str(&format!("Label={l}\nNoAuto=1\n"));
        }
        add(&format!("usr/lib/repart.d/{file}"), t, 0o644);
    }
    add(
        "usr/lib/systemd/system/kiln-health.service",
        format!(
            "{HEADER}[Unit]\nDescription=Kiln health gate of this image version\nAfter=multi-user.target\nBefore=boot-complete.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/lib/kiln/health\nStandardOutput=journal+console\n\n[Install]\nRequiredBy=boot-complete.target\nWantedBy=multi-user.target\n"
        ),
        0o644,
    );
    add(
        "usr/lib/systemd/system/kiln-update.service",
        format!(
            "{HEADER}[Unit]\nDescription=Update {name} from its channel ({}) with systemd-sysupdate\nWants=network-online.target\nAfter=network-online.target boot-complete.target kiln-health.service\n\n[Service]\nType=oneshot\nExecStart=/usr/lib/kiln/update\nStandardOutput=journal+console\n",
            s.update.channel
        ),
        0o644,
    );
    add(
        "usr/lib/systemd/system/kiln-update.timer",
        format!(
            "{HEADER}[Unit]\nDescription=Look for a new version of {name} now and then\n\n[Timer]\nOnBootSec=15min\nOnUnitActiveSec=6h\nRandomizedDelaySec=30min\n\n[Install]\nWantedBy=timers.target\n"
        ),
        0o644,
    );
    add("usr/lib/kiln/health", health_script(&s.health), 0o755);
    add(
        "usr/lib/kiln/update",
        gate_script(name, &s.update.channel, &url),
        0o755,
    );
    for (i, t) in s.health.iter().enumerate() {
        let base = format!("usr/lib/kiln/health.d/{:02}", i + 1);
        add(&format!("{base}.name"), format!("{}\n", t.name), 0o644);
        add(&format!("{base}.sh"), format!("{}\n", t.command), 0o644);
        if let Some(e) = &t.expect {
            add(&format!("{base}.expect"), e.clone(), 0o644);
        }
    }
    f.push((
        "usr/lib/systemd/import-pubring.gpg".into(),
        s.keyring.to_vec(),
        0o644,
    ));
    f
}

/// The EFI variable systemd-boot sets when it booted a counted entry.
const BOOT_COUNT_VAR: &str =
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

fn health_script(checks: &[&TestEntry]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(HEADER);
    s.push_str(&format!(
        r#"# The health gate: this version is good when no unit failed and every
# health check of the recipe passes. Ordered before boot-complete.target,
# so systemd-bless-boot marks the boot good only then.
. /usr/lib/os-release
ok=0
failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | grep -v '^kiln-health' | awk '{{print $1}}' | tr '\n' ' ')
if [ -n "$failed" ]; then
    echo "kiln-health: FAILED: units failed: $failed"
    ok=1
fi
for t in /usr/lib/kiln/health.d/*.sh; do
    [ -e "$t" ] || continue
    base=${{t%.sh}}
    name=$(cat "$base.name")
    out=$(/bin/sh "$t" 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ] && {{ [ ! -e "$base.expect" ] || printf '%s' "$out" | grep -qF -- "$(cat "$base.expect")"; }}; then
        echo "kiln-health: ok: $name"
    else
        echo "kiln-health: FAILED: $name (exit $rc): $out"
        ok=1
    fi
done
if [ "$ok" -ne 0 ]; then
    echo "kiln-health: $IMAGE_ID $IMAGE_VERSION is not healthy: this boot is not blessed"
    if [ -e {BOOT_COUNT_VAR} ]; then
        echo "kiln-health: a counted boot: rebooting (systemd-boot returns to the previous version when its tries are used up)"
        systemctl reboot --no-block
    fi
    exit 1
fi
echo "kiln-health: $IMAGE_ID $IMAGE_VERSION is healthy ({n} checks)"
"#,
        n = checks.len()
    ));
    s
}

/// The update gate: which release of the channel's staged rollout this
/// machine is admitted to (the same rules as `kiln_model::rollout`, in
/// POSIX shell with coreutils, curl, gpgv and systemd-analyze), then
/// systemd-sysupdate for that version. `--dry-run` says what it would do.
/// The `KILN_UPDATE_*` variables point it elsewhere (a test of the gate on
/// a build host); the service's environment sets none of them.
pub fn gate_script(name: &str, channel: &str, url: &str) -> String {
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(HEADER);
    s.push_str(&format!(
        r#"# kiln-update: is this machine admitted to a newer release of its channel?
# Every input is checked before it is used: the listing's signature with the
# image's own key, its BEST-BEFORE date, the rollout's sha256 in the listing.
set -u
NAME='{name}'
CHANNEL='{channel}'
URL=${{KILN_UPDATE_URL:-'{url}'}}
RING=${{KILN_UPDATE_KEYRING:-/usr/lib/systemd/import-pubring.gpg}}
OS_RELEASE=${{KILN_UPDATE_OS_RELEASE:-/usr/lib/os-release}}
MACHINE_ID=${{KILN_UPDATE_MACHINE_ID:-/etc/machine-id}}
SYSUPDATE=${{KILN_UPDATE_SYSUPDATE:-/usr/lib/systemd/systemd-sysupdate}}
now=${{KILN_UPDATE_NOW:-$(date -u +%s)}}
dry=0
[ "${{1:-}}" = --dry-run ] && dry=1
say() {{ echo "kiln-update: $*"; }}
refuse() {{ say "REFUSED: $*"; say "target none"; exit 1; }}
w=$(mktemp -d) || exit 1
trap 'rm -rf "$w"' EXIT
get() {{ curl -fsSL --proto '=http,https,file' --connect-timeout 30 --max-time 300 --retry 3 --max-filesize 1048576 -o "$w/$1" "$URL$1"; }}
get SHA256SUMS || refuse "cannot fetch ${{URL}}SHA256SUMS"
get SHA256SUMS.gpg || refuse "cannot fetch ${{URL}}SHA256SUMS.gpg: an unsigned channel is not trusted"
gpgv --homedir "$w" --keyring "$RING" "$w/SHA256SUMS.gpg" "$w/SHA256SUMS" > "$w/gpgv" 2>&1 ||
    refuse "the signature of SHA256SUMS does not verify with the image's key: $(tr '\n' ' ' < "$w/gpgv")"
best=$(sed -n 's/^[0-9a-f]\{{64\}}  BEST-BEFORE-\([0-9]\{{4\}}-[0-9][0-9]-[0-9][0-9]\)$/\1/p' "$w/SHA256SUMS" | head -n 1)
[ -n "$best" ] || refuse "SHA256SUMS has no BEST-BEFORE entry: a stale listing could be replayed forever"
today=$(date -u -d "@$now" +%Y%m%d)
[ "$today" -lt "$(printf '%s' "$best" | tr -d -)" ] ||
    refuse "SHA256SUMS expired on $best (BEST-BEFORE): the channel is stale, or an old listing is replayed"
sum=$(awk '$2 == "ROLLOUT" {{ print $1; exit }}' "$w/SHA256SUMS")
if [ -z "$sum" ]; then
    say "channel $CHANNEL has no rollout: no release is offered yet (kiln release)"
    say "target none"
    exit 0
fi
get ROLLOUT || refuse "cannot fetch ${{URL}}ROLLOUT"
[ "$(sha256sum < "$w/ROLLOUT" | cut -d ' ' -f 1)" = "$sum" ] ||
    refuse "ROLLOUT does not match its sha256 in the signed SHA256SUMS: changed after signing"
[ "$(head -n 1 "$w/ROLLOUT")" = "kiln-rollout 1 $CHANNEL" ] ||
    refuse "ROLLOUT is not the rollout (format 1) of channel $CHANNEL"
cur=$(. "$OS_RELEASE" && printf '%s' "${{IMAGE_VERSION:-}}")
[ -n "$cur" ] || refuse "$OS_RELEASE has no IMAGE_VERSION"
mid=$(cat "$MACHINE_ID" 2>/dev/null)
case "$mid" in
    ????????????????????????????????) ;;
    *) refuse "no machine id in $MACHINE_ID" ;;
esac
case "$mid" in *[!0-9a-f]*) refuse "the machine id in $MACHINE_ID is not 32 hex digits" ;; esac
h=$(printf '%s:%s' "$mid" "$CHANNEL" | sha256sum | cut -c 1-8)
place=$(( (0x$h * 10000) >> 32 ))
gt() {{ systemd-analyze compare-versions "$1" gt "$2" > /dev/null 2>&1; }}
pct() {{ printf '%d.%02d%%' $(($1 / 100)) $(($1 % 100)); }}
# Each release line: release IMAGE VERSION SINCE START DURATION STATE BARRIER
ok_line() {{
    case "$ver" in ''|*[!A-Za-z0-9.~^+-]*) return 1 ;; esac
    case "$since$start$dur" in ''|*[!0-9]*) return 1 ;; esac
    [ "$start" -le 10000 ] || return 1
    case "$state $bar" in "active -"|"active barrier"|"paused -"|"paused barrier") return 0 ;; esac
    return 1
}}
barrier=
while read -r kind img ver since start dur state bar rest; do
    [ "$kind" = release ] && [ "$img" = "$NAME" ] || continue
    ok_line && [ -z "$rest" ] || refuse "ROLLOUT has a malformed line: $kind $img $ver"
    gt "$ver" "$cur" || continue
    if [ "$bar" = barrier ] && {{ [ -z "$barrier" ] || gt "$barrier" "$ver"; }}; then barrier=$ver; fi
done < "$w/ROLLOUT"
target=
while read -r kind img ver since start dur state bar rest; do
    [ "$kind" = release ] && [ "$img" = "$NAME" ] || continue
    gt "$ver" "$cur" || continue
    if [ -n "$barrier" ] && gt "$ver" "$barrier"; then
        say "$ver: waits for the barrier release $barrier"
        continue
    fi
    if [ "$state" = paused ]; then
        share=0
    elif [ "$dur" -eq 0 ]; then
        share=10000
    else
        el=$((now - since))
        [ "$el" -lt 0 ] && el=0
        [ "$el" -gt "$dur" ] && el=$dur
        share=$((start + (10000 - start) * el / dur))
    fi
    if [ "$place" -lt "$share" ]; then
        say "$ver: admitted (wave at $(pct "$share"), this machine at $(pct "$place"))"
        if [ -z "$target" ] || gt "$ver" "$target"; then target=$ver; fi
    else
        say "$ver: not admitted yet (wave at $(pct "$share") $state, this machine at $(pct "$place"))"
    fi
done < "$w/ROLLOUT"
if [ -z "$target" ]; then
    say "$NAME $cur: no newer release of channel $CHANNEL admits this machine yet"
    say "target none"
    exit 0
fi
say "$NAME $cur: updating to $target (channel $CHANNEL)"
say "target $target"
[ "$dry" = 1 ] && exit 0
exec "$SYSUPDATE" --reboot update "$target"
"#
    ));
    s
}

/// Puts the update files into the image root (inside the root: a link in
/// the tree is replaced, never followed), diverting Debian's keyring.
pub fn install(root: &Root, s: &UpdateSpec) -> Result<()> {
    let ring = "usr/lib/systemd/import-pubring.gpg";
    if root.is_file(ring) {
        let original = root.read(ring)?;
        root.write(format!("{ring}.distrib"), &original, 0o644)?;
        let mut div = root
            .read_to_string("var/lib/dpkg/diversions")
            .unwrap_or_default();
        let entry = format!("/{ring}\n/{ring}.distrib\n:\n");
        if !div.contains(&entry) {
            div.push_str(&entry);
            root.write("var/lib/dpkg/diversions", div.as_bytes(), 0o644)?;
        }
    }
    for (path, content, mode) in image_files(s) {
        root.write(&path, &content, mode)
            .with_context(|| format!("writing /{path} into the image"))?;
    }
    for (unit, wants) in [
        ("kiln-health.service", "boot-complete.target.requires"),
        ("kiln-health.service", "multi-user.target.wants"),
        ("kiln-update.timer", "timers.target.wants"),
    ] {
        root.symlink(
            format!("../{unit}"),
            format!("usr/lib/systemd/system/{wants}/{unit}"),
        )?;
    }
    // Where systemd mounts the ESP (/boot holds the kernel files).
    root.ensure_dir("efi", 0o755)?;
    // systemd-container enables systemd's own update timers; the reboot
    // one would reboot a machine that went back from a bad version into
    // it again and again. kiln-update.timer updates (and reboots) instead.
    for t in ["systemd-sysupdate.timer", "systemd-sysupdate-reboot.timer"] {
        let _ = root.remove_file(format!("etc/systemd/system/timers.target.wants/{t}"));
        root.symlink("/dev/null", format!("etc/systemd/system/{t}"))?;
    }
    Ok(())
}

/// Compresses `src` into `dest` (xz, multi-threaded in fixed blocks: the
/// same bytes whatever the number of cores), written aside and renamed.
pub fn write_xz(src: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_file_name(format!(
        ".{}.partial-{}",
        dest.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let r = (|| -> Result<()> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let stream = liblzma::stream::MtStreamBuilder::new()
            .preset(1)
            .threads(threads)
            .block_size(16 << 20)
            .check(liblzma::stream::Check::Crc64)
            .encoder()
            .context("starting the xz encoder")?;
        let out = std::fs::File::create(&tmp)?;
        let mut enc = liblzma::write::XzEncoder::new_stream(std::io::BufWriter::new(out), stream);
        let mut input = std::fs::File::open(src)?;
        std::io::copy(&mut input, &mut enc)?;
        let mut w = enc.finish()?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("writing {}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(u: &'a Update, health: Vec<&'a TestEntry>) -> UpdateSpec<'a> {
        UpdateSpec {
            name: "img",
            version: "2",
            dps: "x86-64",
            update: u,
            health,
            keyring: b"ring",
            usr_slot: 512 << 20,
            verity_slot: 8 << 20,
        }
    }

    #[test]
    fn transfers_match_the_payload_names_and_labels() {
        let u = Update {
            url: "http://10.0.2.2:8470/".into(),
            channel: "beta".into(),
            tries: 2,
            wave: None,
        };
        let t = TestEntry {
            name: "web".into(),
            command: "systemctl is-active nginx".into(),
            expect: Some("active".into()),
            health: true,
        };
        let files = image_files(&spec(&u, vec![&t]));
        let get = |p: &str| {
            String::from_utf8(files.iter().find(|f| f.0 == p).unwrap().1.clone()).unwrap()
        };
        let usr = get("usr/lib/sysupdate.d/10-usr.transfer");
        assert!(usr.contains("Path=http://10.0.2.2:8470/sysupdate/beta/\n"));
        let names = payload_names("img", "2", "x86-64", "U1", "U2");
        // The source pattern with @v and @u filled in is the payload's name.
        let pat = usr
            .lines()
            .find_map(|l| l.strip_prefix("MatchPattern=img_"))
            .unwrap();
        assert_eq!(
            format!("img_{}", pat.replace("@v", "2").replace("@u", "U1")),
            names.usr
        );
        assert!(usr.contains("MatchPattern=usr_@v\n") && usr_label("2") == "usr_2");
        let verity = get("usr/lib/sysupdate.d/20-usr-verity.transfer");
        assert!(verity.contains(&format!(
            "MatchPattern={}\n",
            names.verity.replace("_2_U2", "_@v_@u")
        )));
        let uki = get("usr/lib/sysupdate.d/90-uki.transfer");
        assert!(uki.contains("TriesLeft=2\n"));
        assert!(uki.contains("MatchPattern=img_@v_x86-64.efi\n"));
        assert!(uki.contains("img_@v.efi\n") && uki_file("img", "2") == "img_2.efi");
        // Transfers are applied in name order: the UKI comes last.
        let mut order: Vec<&str> = files
            .iter()
            .filter(|f| f.0.ends_with(".transfer"))
            .map(|f| f.0.as_str())
            .collect();
        order.sort();
        assert!(order.last().unwrap().ends_with("90-uki.transfer"));
        assert!(get("usr/lib/repart.d/12-usr-b.conf").contains("Label=_empty\n"));
        assert!(!get("usr/lib/repart.d/10-usr-a.conf").contains("Label="));
        assert_eq!(get("usr/lib/kiln/health.d/01.expect"), "active");
        assert!(get("usr/lib/kiln/health").contains("boot-complete.target"));
    }
}

//! The NoCloud `cidata` seed: an account with an SSH key and, for `kiln
//! test`, a runner that executes the test commands and reports on the
//! serial console.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_image::disk;

use crate::{b64, QemuError};

/// The guest-side runner, installed by cloud-init: waits for the boot to
/// finish, runs every test command and writes the results to the serial
/// console (retrying: the getty's vhangup can revoke an open descriptor).
/// Its lines are what [`parse_console`](crate::parse_console) reads.
pub const RUNNER: &str = r#"#!/bin/sh
out=/run/kiln-test.report
{
  state=$(timeout 900 systemctl is-system-running --wait 2>/dev/null)
  echo "KILN-T state $state"
  echo "KILN-T failed $(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  echo "KILN-T uptime $(cut -d' ' -f1 /proc/uptime)"
  i=0
  while read -r line; do
    i=$((i+1))
    cmd=$(printf '%s' "$line" | base64 -d)
    res=$(timeout 300 sh -c "$cmd" 2>&1 </dev/null)
    echo "KILN-T rc $i $?"
    echo "KILN-T out $i $(printf '%s' "$res" | head -c 3000 | base64 -w0)"
  done < /etc/kiln-test/commands
  echo "KILN-T end"
} > $out 2>&1
for t in 1 2 3 4 5 6 7 8 9 10; do cat $out > /dev/ttyS0 && break; sleep 1; done
sleep 3
systemctl poweroff
"#;

/// Writes `WORK/seed.img`, a NoCloud seed: a `kiln` user (passwordless
/// sudo, locked password) accepting `pubkey` and, when `runner` is given,
/// the [`RUNNER`] with these shell commands (one per test, in order) and a
/// unit that starts it after `multi-user.target`.
pub fn make_seed(
    work: &Path,
    pubkey: &str,
    runner: Option<&[String]>,
) -> Result<PathBuf, QemuError> {
    let mut ud = user_data_head(pubkey)?;
    if let Some(commands) = runner {
        let commands: String = commands.iter().map(|c| format!("{}\n", b64(c))).collect();
        let unit = "[Unit]\nDescription=Kiln boot test runner\nAfter=multi-user.target\n\n[Service]\nType=simple\nExecStart=/bin/sh /etc/kiln-test/runner\n";
        ud.push_str(&write_files(&[
            ("/etc/kiln-test/runner", "0755", RUNNER.to_string()),
            ("/etc/kiln-test/commands", "0644", commands),
            (
                "/etc/systemd/system/kiln-test.service",
                "0644",
                unit.to_string(),
            ),
        ]));
        ud.push_str("runcmd:\n  - [systemctl, daemon-reload]\n  - [systemctl, start, --no-block, kiln-test.service]\n");
    }
    seed_from_user_data(work, &ud)
}

/// The `#cloud-config` head of a seed: a `kiln` user (passwordless sudo,
/// locked password) accepting `pubkey`.
pub fn user_data_head(pubkey: &str) -> Result<String, QemuError> {
    let key = serde_json::to_string(pubkey.lines().next().unwrap_or("").trim())?;
    Ok(format!(
        "#cloud-config\nusers:\n  - default\n  - name: kiln\n    shell: /bin/bash\n    lock_passwd: true\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    ssh_authorized_keys:\n      - {key}\n"
    ))
}

/// `write_files` entries of a cloud-config: (path, permissions, content).
pub fn write_files(files: &[(&str, &str, String)]) -> String {
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let mut out = String::from("write_files:\n");
    for (path, perm, content) in files {
        out.push_str(&format!(
            "  - path: {path}\n    permissions: '{perm}'\n    content: |\n{}",
            indent(if content.is_empty() { "\n" } else { content })
        ));
    }
    out
}

/// Writes `WORK/seed.img`, a NoCloud seed with this user-data.
pub fn seed_from_user_data(work: &Path, ud: &str) -> Result<PathBuf, QemuError> {
    let dir = work.join("seed");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("user-data"), ud)?;
    std::fs::write(
        dir.join("meta-data"),
        "instance-id: kiln-test-1\nlocal-hostname: kiln-test\n",
    )?;
    let img = work.join("seed.img");
    disk::make_fat(
        &img,
        2 << 20,
        "CIDATA",
        "4b494c4e",
        &[
            disk::FatFile {
                source: dir.join("user-data"),
                dest: "user-data".into(),
            },
            disk::FatFile {
                source: dir.join("meta-data"),
                dest: "meta-data".into(),
            },
        ],
        0,
    )?;
    Ok(img)
}

/// Generates a throwaway Ed25519 key pair `WORK/id_ed25519{,.pub}`; returns
/// the public key.
pub fn ssh_key(work: &Path) -> Result<String, QemuError> {
    let key = work.join("id_ed25519");
    let mut c = Command::new(disk::find_tool("ssh-keygen")?);
    c.args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(&key);
    disk::run(&mut c)?;
    Ok(std::fs::read_to_string(work.join("id_ed25519.pub"))?
        .trim()
        .to_string())
}

/// The caller's public SSH keys (`~/.ssh/id_{ed25519,ecdsa,rsa}.pub`, in
/// that order), for a guest the user logs into.
pub fn user_ssh_keys() -> Vec<String> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
        .iter()
        .filter_map(|k| std::fs::read_to_string(home.join(".ssh").join(k)).ok())
        .map(|k| k.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_quotes_the_key_and_carries_the_commands_in_base64() {
        let d = tempfile::tempdir().unwrap();
        let img = make_seed(
            d.path(),
            "ssh-ed25519 AAAA me: #laptop\n",
            Some(&["systemctl is-active ssh".to_string()]),
        )
        .unwrap();
        assert!(img.is_file());
        let ud = std::fs::read_to_string(d.path().join("seed/user-data")).unwrap();
        assert!(ud.contains("- \"ssh-ed25519 AAAA me: #laptop\"\n"), "{ud}");
        assert!(ud.contains(&b64("systemctl is-active ssh")), "{ud}");
        assert!(ud.contains("kiln-test.service"), "{ud}");
        let d2 = tempfile::tempdir().unwrap();
        make_seed(d2.path(), "ssh-ed25519 BBBB", None).unwrap();
        let ud = std::fs::read_to_string(d2.path().join("seed/user-data")).unwrap();
        assert!(
            !ud.contains("write_files") && !ud.contains("runcmd"),
            "{ud}"
        );
    }
}

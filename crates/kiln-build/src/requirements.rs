//! Packages the recipe's outputs need, checked against the lock before any
//! download or unpack: a disk without a boot loader fails in a second,
//! naming everything that is missing at once, not one package per build.

use std::collections::BTreeSet;

use kiln_model::{Format, Hinted};
use kiln_recipe::{Lock, Recipe};

/// One package (or one of several alternatives) an output needs.
struct Need {
    /// Any of these satisfies the need; the first is suggested.
    any_of: &'static [&'static str],
    /// Package names starting with this satisfy it too.
    prefix: Option<&'static str>,
    why: &'static str,
}

fn needs(recipe: &Recipe, arch: &str) -> Vec<(Format, Need)> {
    let mut out = Vec::new();
    let disk = recipe
        .output
        .formats
        .iter()
        .filter_map(|f| Format::parse(f))
        .find(|f| f.is_disk());
    let Some(disk) = disk else {
        return out;
    };
    let kernel: &'static [&'static str] = if arch == "arm64" {
        &["linux-image-cloud-arm64"]
    } else {
        &["linux-image-cloud-amd64"]
    };
    out.push((
        disk,
        Need {
            any_of: kernel,
            prefix: Some("linux-image-"),
            why: "a disk image needs a kernel (linux-image-ARCH for bare metal)",
        },
    ));
    out.push((
        disk,
        Need {
            any_of: &["systemd-boot-efi"],
            prefix: None,
            why: "the UEFI boot loader",
        },
    ));
    out.push((
        disk,
        Need {
            any_of: &["systemd-ukify"],
            prefix: None,
            why: "builds the Unified Kernel Image",
        },
    ));
    if recipe.disk.layout == "immutable" {
        out.push((
            disk,
            Need {
                any_of: &["dracut", "dracut-core"],
                prefix: None,
                why: "the systemd initrd that opens the dm-verity /usr",
            },
        ));
        out.push((
            disk,
            Need {
                any_of: &["systemd-cryptsetup"],
                prefix: None,
                why: "systemd-veritysetup, which opens /usr under dm-verity",
            },
        ));
    } else {
        out.push((
            disk,
            Need {
                any_of: &["initramfs-tools", "dracut", "dracut-core"],
                prefix: None,
                why: "an initrd generator",
            },
        ));
    }
    out
}

/// Fails when the lock lacks a package an output of `recipe` needs, or the
/// outputs cannot be made from this kind of image at all.
pub fn check(recipe: &Recipe, lock: &Lock) -> Result<(), Hinted> {
    for f in &recipe.output.formats {
        if (f == "disk" || f == "qcow2") && recipe.container.distroless {
            return Err(Hinted::new(
                format!(
                    "{}: a distroless image cannot be a `{f}`: it has no init, kernel or boot loader",
                    recipe.path.display()
                ),
                "build the disk from a full recipe (distroless = false)",
            ));
        }
    }
    let mut missing: Vec<String> = Vec::new();
    let mut add: BTreeSet<&str> = BTreeSet::new();
    for arch in &recipe.image.architectures {
        let have: BTreeSet<&str> = lock
            .packages
            .iter()
            .filter(|p| &p.target == arch)
            .map(|p| p.name.as_str())
            .collect();
        for (format, need) in needs(recipe, arch) {
            let met = need.any_of.iter().any(|n| have.contains(n))
                || need
                    .prefix
                    .is_some_and(|pre| have.iter().any(|n| n.starts_with(pre)));
            if !met {
                let name = need.any_of[0];
                let alts = if need.any_of.len() > 1 {
                    format!(" (or {})", need.any_of[1..].join(", "))
                } else {
                    String::new()
                };
                let line = format!("{name}{alts}: {}, for `{format}` on {arch}", need.why);
                if !missing.contains(&line) {
                    missing.push(line);
                }
                add.insert(name);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = add.iter().map(|n| format!("\"{n}\"")).collect();
    Err(Hinted::new(
        format!(
            "{}: its outputs need packages the lock does not have:\n  {}",
            recipe.path.display(),
            missing.join("\n  ")
        ),
        format!(
            "add them to the recipe's [packages] section:\n    include = [{}]\nor include a class that has them (recipes/classes/cloud.toml)",
            list.join(", ")
        ),
    ))
}

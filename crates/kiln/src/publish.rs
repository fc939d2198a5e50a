//! `kiln publish` and `kiln verify TREE`: renders kiln-publish's reports
//! and records what was published in the catalog.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_attest::{SigningKey, VerifyingKey};
use kiln_model::event::Stage;
use kiln_model::{Hinted, Reporter};
use kiln_publish::registry::RegistryOptions;
use kiln_publish::source::Build;
use kiln_publish::tree::TreeOptions;
use kiln_publish::verify::VerifyOptions;
use kiln_publish::Target;
use serde_json::json;

use crate::cmd::Usage;
use crate::ui::Ui;

/// `--to TARGET` as clap parses it: an unknown scheme is a usage error.
pub fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| {
        let text = e.to_string();
        match e.hint() {
            Some(h) if !text.contains(kiln_publish::SCHEMES) => format!("{text}\n\nhint: {h}"),
            _ => text,
        }
    })
}

pub struct PublishArgs {
    pub outputs: Vec<PathBuf>,
    pub targets: Vec<Target>,
    pub channel: String,
    pub sign_key: Option<PathBuf>,
    pub valid_days: u32,
    pub base_url: Option<String>,
    pub insecure: bool,
    pub username: Option<String>,
    pub json: bool,
}

pub fn cmd_publish(
    ui: &Ui,
    catalog: Option<&Path>,
    reporter: &dyn Reporter,
    a: &PublishArgs,
) -> Result<()> {
    // Everything the command line can get wrong, before any work.
    let has_tree = a.targets.iter().any(|t| matches!(t, Target::Tree(_)));
    if has_tree && a.sign_key.is_none() {
        return Err(Usage::new(
            "a file:// target needs a key to sign its channel document",
            "give --sign-key KEY.pem (or set KILN_SIGN_KEY); make one with \
             `openssl genpkey -algorithm ed25519 -out KEY.pem`",
        )
        .into());
    }
    kiln_publish::document::check_channel(&a.channel).map_err(|m| {
        Usage::new(
            format!("--channel {}: {m}", a.channel),
            "e.g. --channel stable",
        )
    })?;
    if a.valid_days == 0 {
        return Err(Usage::new(
            "--valid-days 0: the channel document would be expired when written",
            "give at least 1 (default 30)",
        )
        .into());
    }
    for t in &a.targets {
        if let Target::Registry(r) = t {
            if a.outputs.len() > 1 && kiln_publish::registry::split_tag(r).1.is_some() {
                return Err(Usage::new(
                    format!("{} builds to the one tag of {r}: each would replace the last", a.outputs.len()),
                    "leave the tag out (each build gets its own version tag) or publish one build per call",
                )
                .into());
            }
        }
    }
    let key = match &a.sign_key {
        Some(p) if has_tree => Some(SigningKey::from_pem_file(p)?),
        _ => None,
    };
    let progress = |m: &str| reporter.step(Stage::Publish, m);
    // Every build is checked against its manifest before anything is sent.
    let builds = a
        .outputs
        .iter()
        .map(|d| Build::open(d, &progress))
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = if a.targets.iter().any(|t| matches!(t, Target::Registry(_))) {
        let first = a.targets.iter().find_map(|t| match t {
            Target::Registry(r) => Some(r.clone()),
            _ => None,
        });
        let registry = first
            .as_deref()
            .map(|r| {
                let (base, _) = kiln_publish::registry::split_tag(r);
                kiln_registry::Reference::parse(&format!("{base}:x")).map(|x| x.registry)
            })
            .transpose()?;
        match registry {
            Some(reg) => crate::cmd::registry_credentials(a.username.clone(), &reg)?,
            None => None,
        }
    } else {
        None
    };
    let mut published = Vec::new();
    for t in &a.targets {
        match t {
            Target::Tree(dir) => {
                let r = kiln_publish::tree::publish(
                    dir,
                    &builds,
                    &TreeOptions {
                        channel: &a.channel,
                        key: key.as_ref().expect("checked above"),
                        valid_for: i64::from(a.valid_days) * 86_400,
                        now: kiln_publish::unix_now(),
                        base_url: a.base_url.as_deref(),
                        progress: &progress,
                    },
                )?;
                let doc = dir.join(&r.document);
                for (b, pb) in builds.iter().zip(&r.builds) {
                    crate::catalog::record_publication(
                        ui,
                        catalog,
                        &b.dir,
                        &kiln_catalog::Publication {
                            target: t.display(),
                            kind: "tree".into(),
                            location: doc.display().to_string(),
                            digest: None,
                            channel: Some(a.channel.clone()),
                            published_at: 0,
                        },
                    );
                    reporter.step(
                        Stage::Published,
                        &format!(
                            "{} {} in {} ({} of {} files copied)",
                            pb.image,
                            pb.version,
                            doc.display(),
                            pb.files.iter().filter(|f| f.copied).count(),
                            pb.files.len()
                        ),
                    );
                }
                if !r.document_written {
                    reporter.step(
                        Stage::Published,
                        &format!("{}: unchanged (serial {})", doc.display(), r.serial),
                    );
                }
                published.push(json!({
                    "target": t.display(),
                    "kind": "tree",
                    "channel": r.channel,
                    "document": doc.display().to_string(),
                    "serial": r.serial,
                    "document-written": r.document_written,
                    "bytes-copied": r.bytes_copied,
                    "builds": r.builds.iter().map(|b| json!({
                        "build-id": b.build_id,
                        "image": b.image,
                        "version": b.version,
                        "files": b.files.iter().map(|f| json!({
                            "role": f.role.name(),
                            "path": f.path,
                            "size": f.size,
                            "sha256": f.sha256,
                            "copied": f.copied,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }));
            }
            Target::Registry(reference) => {
                for b in &builds {
                    let r = kiln_publish::registry::publish(
                        b,
                        reference,
                        &RegistryOptions {
                            insecure: a.insecure,
                            credentials: credentials.clone(),
                            progress: &progress,
                        },
                    )?;
                    let location = format!("{}@{}", r.repository, r.digest);
                    crate::catalog::record_publication(
                        ui,
                        catalog,
                        &b.dir,
                        &kiln_catalog::Publication {
                            target: t.display(),
                            kind: "registry".into(),
                            location: location.clone(),
                            digest: Some(r.digest.clone()),
                            channel: None,
                            published_at: 0,
                        },
                    );
                    reporter.step(
                        Stage::Published,
                        &format!(
                            "{location} as {} ({}; {} artifacts attached{})",
                            r.tags.join(", "),
                            if r.nothing_sent() {
                                "all there already, nothing sent".to_string()
                            } else {
                                format!(
                                    "{} blobs uploaded, {} already there",
                                    r.blobs_uploaded, r.blobs_skipped
                                )
                            },
                            r.referrers.len(),
                            match r.discovery {
                                kiln_registry::attach::Discovery::ReferrersApi => "",
                                kiln_registry::attach::Discovery::TagFallback => {
                                    ", listed in the referrers tag"
                                }
                            }
                        ),
                    );
                    published.push(json!({
                        "target": t.display(),
                        "kind": "registry",
                        "build-id": b.id,
                        "image": b.manifest.image,
                        "repository": r.repository,
                        "tags": r.tags,
                        "digest": r.digest,
                        "blobs-uploaded": r.blobs_uploaded,
                        "blobs-skipped": r.blobs_skipped,
                        "manifests-pushed": r.manifests_pushed,
                        "artifact-bytes-uploaded": r.artifact_bytes_uploaded,
                        "discovery": match r.discovery {
                            kiln_registry::attach::Discovery::ReferrersApi => "referrers-api",
                            kiln_registry::attach::Discovery::TagFallback => "tag-fallback",
                        },
                        "referrers": r.referrers.iter().map(|x| json!({
                            "artifact-type": x.artifact_type,
                            "digest": x.digest,
                            "present": x.present,
                        })).collect::<Vec<_>>(),
                    }));
                }
            }
        }
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "schema-version": 1,
                "published": published,
            }))?
        );
    }
    Ok(())
}

/// `kiln verify TREE`: a download tree's channel documents and files.
pub fn cmd_verify_tree(
    reporter: &dyn Reporter,
    tree: &Path,
    key: Option<&Path>,
    channels: &[String],
    json_out: bool,
) -> Result<()> {
    let Some(key) = key else {
        return Err(Usage::new(
            format!(
                "{} is a download tree: its documents are checked against a key",
                tree.display()
            ),
            "give --key KEY.pub, the public key of the key that signs the tree",
        )
        .into());
    };
    let key = VerifyingKey::from_pem_file(key)?;
    let progress = |m: &str| reporter.step(Stage::Verify, m);
    let r = kiln_publish::verify::verify(
        tree,
        &VerifyOptions {
            key: &key,
            channels: channels.to_vec(),
            now: kiln_publish::unix_now(),
            state_dir: kiln_publish::verify::default_state_dir(),
            progress: &progress,
        },
    )?;
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    }
    for c in &r.channels {
        if c.problems.is_empty() {
            reporter.step(
                Stage::Verify,
                &format!(
                    "channel {}: serial {}, {} images, {} versions, {} files ({}) match, signed by key {}",
                    c.channel,
                    c.serial.unwrap_or(0),
                    c.images,
                    c.versions,
                    c.files_checked,
                    kiln_build::fetch::human_size(c.bytes_checked),
                    &r.keyid[..16.min(r.keyid.len())]
                ),
            );
        }
    }
    if !r.ok {
        let problems: Vec<String> = r
            .channels
            .iter()
            .flat_map(|c| {
                c.problems
                    .iter()
                    .map(move |p| format!("channel {}: {p}", c.channel))
            })
            .collect();
        return Err(Hinted::new(
            format!(
                "{} does not verify ({} problems):\n  {}",
                tree.display(),
                problems.len(),
                problems.join("\n  ")
            ),
            "do not use these files; republish from the builds (kiln publish) or restore the tree",
        )
        .into());
    }
    Ok(())
}

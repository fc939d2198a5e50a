//! Where packages come from: the recipe's sources, the host's apt
//! configuration and per-run overrides.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_archive::{Cache, Keyring, MirrorOverride, Source};
use kiln_recipe::{Recipe, SignedBy};
use serde::{Deserialize, Serialize};

/// Per-run choices about sources (the CLI's `--offline`, `--mirror`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SourceOptions {
    /// Use only the local index cache; never touch the network.
    #[serde(default)]
    pub offline: bool,
    /// Debian mirror to use instead of the one in the host's apt sources.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Security mirror to use instead of the one in the host's apt sources.
    #[serde(default)]
    pub security_mirror: Option<String>,
    /// Cache directory (default: $KILN_CACHE_DIR, $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Accept a Release file older than the cached one or the one the
    /// existing lock records (an intended rollback).
    #[serde(default)]
    pub allow_older_release: bool,
}

impl SourceOptions {
    pub fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(d) => Cache::new(d),
            None => Cache::from_env(),
        }
    }
}

/// The sources a recipe reads from, in apt's order.
pub fn recipe_sources(recipe: &Recipe, opts: &SourceOptions) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    if recipe.image.default_sources {
        out.extend(kiln_archive::sources::default_sources(
            &recipe.image.suite,
            &recipe.image.components,
            Path::new("/"),
            &MirrorOverride {
                mirror: opts.mirror.clone(),
                security_mirror: opts.security_mirror.clone(),
            },
        )?);
    }
    for s in &recipe.sources {
        let keyring = match &s.signed_by {
            Some(SignedBy::File(p)) => Keyring::Files(vec![p.clone()]),
            Some(SignedBy::Inline(k)) => Keyring::Inline(k.clone()),
            None => Keyring::Files(vec![PathBuf::from(
                "/usr/share/keyrings/debian-archive-keyring.gpg",
            )]),
        };
        for suite in &s.suites {
            out.push(Source {
                uri: s.uri.clone(),
                suite: suite.clone(),
                components: s.components.clone(),
                keyring: keyring.clone(),
                allow_unsigned: s.allow_unsigned,
                origin: s.origin.clone(),
            });
        }
    }
    Ok(out)
}

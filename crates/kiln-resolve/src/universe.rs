//! The candidate universe: one installable version per package name, as apt
//! would pick it, plus the virtual packages their `Provides` declare.

use rustc_hash::FxHashMap as HashMap;
use std::cmp::Ordering;

use kiln_deb::deb822;
use kiln_deb::relation::{parse_provides, parse_relations, Dep};

use crate::ResolveError;

/// One Packages index handed to [`Universe::build`], in apt's source order.
pub struct IndexInput<'a> {
    /// Caller's release number (kept in [`Pkg::release`]).
    pub release: usize,
    /// apt pin priority of the release (500 normally).
    pub pin: i32,
    /// Whether the release is the recipe's suite itself (not -updates or -security):
    /// the Priority- and Essential-based sets are taken from there, as mmdebstrap does.
    pub main_suite: bool,
    pub text: &'a str,
}

/// A candidate version of a binary package.
#[derive(Debug, Clone)]
pub struct Pkg<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub essential: bool,
    /// `Important: yes` or `Protected: yes` (apt's Important flag).
    pub important: bool,
    pub priority: &'a str,
    pub multi_arch: &'a str,
    pub source: &'a str,
    pub source_version: &'a str,
    pub filename: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub installed_size: u64,
    pub release: usize,
    pub pin: i32,
    /// Some version of this package is in the main suite.
    pub in_main_suite: bool,
    /// The order in which apt's cache would have created this name.
    pub apt_id: u32,
    pub pre_depends: &'a str,
    pub depends: &'a str,
    pub recommends: &'a str,
    pub conflicts: &'a str,
    pub breaks: &'a str,
    pub provides: &'a str,
}

impl Pkg<'_> {
    /// apt's numeric priority (missing = 0, as apt's cache stores it).
    pub fn priority_rank(&self) -> u8 {
        match self.priority {
            "" => 0,
            "required" => 1,
            "important" => 2,
            "standard" => 3,
            "optional" => 4,
            _ => 5,
        }
    }
}

pub type PkgId = usize;

/// Every candidate, indexed by name, with reverse `Provides`.
pub struct Universe<'a> {
    pub arch: String,
    pub pkgs: Vec<Pkg<'a>>,
    pub by_name: HashMap<&'a str, PkgId>,
    /// Virtual name → (provider, provided version).
    pub providers: HashMap<&'a str, Vec<(PkgId, Option<&'a str>)>>,
}

/// The fields of one index stanza that Kiln reads.
#[derive(Default)]
struct Fields<'a> {
    name: &'a str,
    version: &'a str,
    arch: &'a str,
    essential: bool,
    important: bool,
    priority: &'a str,
    multi_arch: &'a str,
    source: Option<&'a str>,
    filename: &'a str,
    size: u64,
    sha256: &'a str,
    installed_size: u64,
    pre_depends: &'a str,
    depends: &'a str,
    recommends: &'a str,
    conflicts: &'a str,
    breaks: &'a str,
    provides: &'a str,
    suggests: &'a str,
    replaces: &'a str,
    enhances: &'a str,
}

fn relation_names<'a>(field: &'a str, mut f: impl FnMut(&'a str)) {
    for part in field.split([',', '|']) {
        let part = part.trim_start();
        let end = part
            .find(|c: char| c.is_whitespace() || c == '(' || c == ':' || c == '[' || c == '<')
            .unwrap_or(part.len());
        if end > 0 {
            f(&part[..end]);
        }
    }
}

impl<'a> Universe<'a> {
    pub fn build(inputs: &[IndexInput<'a>], arch: &str) -> Result<Universe<'a>, ResolveError> {
        Self::build_keeping(inputs, arch, &Default::default())
    }

    /// [`Universe::build`], except that a package named in `keep` has the
    /// version given there as its candidate whenever an index has it (as
    /// `kiln lock --update` keeps every package it was not asked to update).
    pub fn build_keeping(
        inputs: &[IndexInput<'a>],
        arch: &str,
        keep: &std::collections::HashMap<String, String>,
    ) -> Result<Universe<'a>, ResolveError> {
        let mut pkgs: Vec<Pkg<'a>> = Vec::new();
        let mut by_name: HashMap<&'a str, PkgId> =
            HashMap::with_capacity_and_hasher(80_000, Default::default());
        let mut apt_ids: HashMap<&'a str, u32> =
            HashMap::with_capacity_and_hasher(120_000, Default::default());
        let mut seen_versions: rustc_hash::FxHashSet<(&'a str, &'a str)> = Default::default();
        for input in inputs {
            for para in deb822::paragraphs(input.text) {
                let para = para.map_err(|e| ResolveError::BadIndex(e.to_string()))?;
                // One pass over the fields; archive indexes use canonical case.
                let mut f = Fields::default();
                for (k, v) in para.fields() {
                    match k {
                        "Package" => f.name = v,
                        "Version" => f.version = v,
                        "Architecture" => f.arch = v,
                        "Essential" => f.essential = v == "yes",
                        "Important" | "Protected" => f.important |= v == "yes",
                        "Priority" => f.priority = v,
                        "Multi-Arch" => f.multi_arch = v,
                        "Source" => f.source = Some(v),
                        "Filename" => f.filename = v,
                        "Size" => f.size = v.trim().parse().unwrap_or(0),
                        "SHA256" => f.sha256 = v,
                        "Installed-Size" => f.installed_size = v.trim().parse().unwrap_or(0),
                        "Pre-Depends" => f.pre_depends = v,
                        "Depends" => f.depends = v,
                        "Recommends" => f.recommends = v,
                        "Conflicts" => f.conflicts = v,
                        "Breaks" => f.breaks = v,
                        "Provides" => f.provides = v,
                        "Suggests" => f.suggests = v,
                        "Replaces" => f.replaces = v,
                        "Enhances" => f.enhances = v,
                        _ => {}
                    }
                }
                let (name, version) = (f.name, f.version);
                if name.is_empty() || version.is_empty() || (f.arch != arch && f.arch != "all") {
                    continue;
                }
                // apt creates package names in the order it first meets them:
                // the stanza's own name, its relation targets, then its provides.
                let mut intern = |n: &'a str| {
                    let next = apt_ids.len() as u32;
                    apt_ids.entry(n).or_insert(next);
                };
                intern(name);
                if seen_versions.insert((name, version)) {
                    for v in [
                        f.pre_depends,
                        f.depends,
                        f.conflicts,
                        f.breaks,
                        f.recommends,
                        f.suggests,
                        f.replaces,
                        f.enhances,
                        f.provides,
                    ] {
                        if !v.is_empty() {
                            relation_names(v, &mut intern);
                        }
                    }
                }
                let (source, source_version) = match f.source {
                    Some(s) => match s.split_once('(') {
                        Some((n, v)) => (n.trim(), v.trim_end_matches(')').trim()),
                        None => (s.trim(), version),
                    },
                    None => (name, version),
                };
                let pkg = Pkg {
                    name,
                    version,
                    arch: f.arch,
                    essential: f.essential,
                    important: f.important,
                    priority: f.priority,
                    multi_arch: f.multi_arch,
                    source,
                    source_version,
                    filename: f.filename,
                    size: f.size,
                    sha256: f.sha256,
                    installed_size: f.installed_size,
                    release: input.release,
                    pin: input.pin,
                    in_main_suite: input.main_suite,
                    apt_id: 0,
                    pre_depends: f.pre_depends,
                    depends: f.depends,
                    recommends: f.recommends,
                    conflicts: f.conflicts,
                    breaks: f.breaks,
                    provides: f.provides,
                };
                match by_name.get(name) {
                    None => {
                        by_name.insert(name, pkgs.len());
                        pkgs.push(pkg);
                    }
                    Some(&i) => {
                        let cur = &pkgs[i];
                        let kept = keep.get(name).map(String::as_str);
                        let better = if kept.is_some() && kept == Some(cur.version) {
                            false
                        } else if kept.is_some() && kept == Some(pkg.version) {
                            true
                        } else {
                            pkg.pin > cur.pin
                                || (pkg.pin == cur.pin
                                    && kiln_deb::version::compare(pkg.version, cur.version)
                                        == Ordering::Greater)
                        };
                        let in_main = cur.in_main_suite || pkg.in_main_suite;
                        if better {
                            pkgs[i] = pkg;
                        }
                        pkgs[i].in_main_suite = in_main;
                    }
                }
            }
        }
        let mut providers: HashMap<&'a str, Vec<(PkgId, Option<&'a str>)>> = HashMap::default();
        for (i, p) in pkgs.iter_mut().enumerate() {
            p.apt_id = apt_ids[p.name];
            if p.sha256.is_empty() || p.filename.is_empty() {
                return Err(ResolveError::BadIndex(format!(
                    "package {} {} has no Filename or SHA256 in its index",
                    p.name, p.version
                )));
            }
            if !p.provides.is_empty() {
                let provs = parse_provides(p.provides).map_err(|e| {
                    ResolveError::BadIndex(format!("{} {}: Provides: {e}", p.name, p.version))
                })?;
                for d in provs {
                    providers
                        .entry(d.name)
                        .or_default()
                        .push((i, d.constraint.map(|(_, v)| v)));
                }
            }
        }
        Ok(Universe {
            arch: arch.to_string(),
            pkgs,
            by_name,
            providers,
        })
    }

    pub fn get(&self, name: &str) -> Option<PkgId> {
        self.by_name.get(name).copied()
    }

    /// Parses a relation field of package `p`.
    pub fn relations(&self, p: PkgId, field: &'a str) -> Result<Vec<Vec<Dep<'a>>>, ResolveError> {
        parse_relations(field).map_err(|e| {
            ResolveError::BadIndex(format!(
                "{} {}: {e}",
                self.pkgs[p].name, self.pkgs[p].version
            ))
        })
    }

    /// Whether candidate `q` satisfies the atom `d` directly (not through Provides).
    pub fn satisfies_real(&self, q: PkgId, d: &Dep) -> bool {
        let pkg = &self.pkgs[q];
        let arch_ok = match d.arch {
            None | Some("native") => true,
            // apt gives only Multi-Arch: allowed packages the implicit `name:any`.
            Some("any") => pkg.multi_arch == "allowed",
            Some(a) => a == self.arch || pkg.arch == a,
        };
        arch_ok && d.satisfied_by_version(pkg.version)
    }

    /// Whether a provided version satisfies the atom `d`.
    pub fn satisfies_provided(d: &Dep, provided: Option<&str>) -> bool {
        match (d.constraint, provided) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(v)) => d.satisfied_by_version(v),
        }
    }

    /// Every (package, satisfies) pair an atom could be satisfied by: the real
    /// package of that name first, then its providers.
    pub fn targets(&self, d: &Dep) -> Vec<(PkgId, bool)> {
        let mut out = Vec::new();
        if let Some(q) = self.get(d.name) {
            out.push((q, self.satisfies_real(q, d)));
        }
        if let Some(provs) = self.providers.get(d.name) {
            for &(p, pv) in provs {
                let ok = Self::satisfies_provided(d, pv);
                if let Some(e) = out.iter_mut().find(|(q, _)| *q == p) {
                    e.1 |= ok;
                } else {
                    out.push((p, ok));
                }
            }
        }
        out
    }

    /// Close names, for "did you mean" hints on unknown packages.
    pub fn suggest(&self, name: &str) -> Vec<&'a str> {
        let mut scored: Vec<(f64, &'a str)> = self
            .by_name
            .keys()
            .chain(self.providers.keys())
            .map(|n| (strsim::jaro_winkler(name, n), *n))
            .filter(|(s, _)| *s > 0.88)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        scored.dedup_by(|a, b| a.1 == b.1);
        scored.into_iter().take(3).map(|(_, n)| n).collect()
    }
}

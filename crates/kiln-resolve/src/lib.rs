//! apt-grade dependency resolution for Kiln.
//!
//! [`Universe`] holds one candidate per package (apt's pin rules), [`resolve`]
//! finds a consistent installation set with a CDCL solver (resolvo) whose
//! choices are steered by a replay of apt's own marking algorithm, so the
//! result is what `apt-get install` would pick wherever apt succeeds.

mod apt;
pub mod deps;
mod solve;
pub mod universe;

use std::collections::{HashMap, VecDeque};

pub use universe::{IndexInput, Pkg, PkgId, Universe};

use deps::DepCache;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("malformed package index: {0}")]
    BadIndex(String),
    #[error("unknown package `{name}`")]
    UnknownPackage {
        name: String,
        suggestions: Vec<String>,
    },
    /// Several names at once: every one the request has wrong.
    #[error("unknown packages {}", names.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    UnknownPackages {
        /// Each name with its suggestions.
        names: Vec<(String, Vec<String>)>,
    },
    #[error("`{name}` is a virtual package provided by {}", providers.join(", "))]
    Ambiguous {
        name: String,
        providers: Vec<String>,
    },
    #[error("`{name}` is both requested and excluded")]
    ExcludedRoot { name: String },
    #[error("the requested packages cannot be installed together:\n{explanation}")]
    Unsatisfiable {
        explanation: String,
        /// Two packages that must both be installed conflict (rather than
        /// a dependency nothing satisfies).
        conflict: bool,
    },
}

impl ResolveError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ResolveError::UnknownPackage { suggestions, .. } if !suggestions.is_empty() => Some(format!(
                "did you mean {}?",
                suggestions.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" or ")
            )),
            ResolveError::UnknownPackage { .. } => Some(
                "check the spelling, the suite and the components ([image] components) of the recipe".into(),
            ),
            ResolveError::UnknownPackages { names } => {
                let mut parts: Vec<String> = names
                    .iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(n, s)| {
                        format!(
                            "for `{n}` did you mean {}?",
                            s.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" or ")
                        )
                    })
                    .collect();
                parts.push("check the spelling, the suite and the components ([image] components) of the recipe".into());
                Some(parts.join("; "))
            }
            ResolveError::Ambiguous { .. } => Some("include one of the providers explicitly".into()),
            ResolveError::ExcludedRoot { .. } => Some("remove it from [packages] exclude".into()),
            ResolveError::Unsatisfiable { conflict: true, .. } => Some(
                "the two cannot be in one image: leave out the package that pulls in one of them ([packages] include), or pick another alternative by including it"
                    .into(),
            ),
            ResolveError::Unsatisfiable { .. } => Some(
                "change the request (include, exclude, suite) or add the source that carries the missing version"
                    .into(),
            ),
            ResolveError::BadIndex(_) => None,
        }
    }
}

/// What to install.
pub struct Request<'r> {
    /// Packages named by the user, in order.
    pub include: &'r [String],
    pub exclude: &'r [String],
    /// Whether a package of this Debian Priority belongs to the base set.
    pub priority: &'r dyn Fn(&str) -> bool,
    /// Install every `Essential: yes` package (dpkg needs them in a full system).
    pub essential: bool,
    pub recommends: bool,
    /// Dependencies on these names count as met.
    pub ignore: &'r [String],
}

/// Why a package was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Include,
    Essential,
    Priority,
    Dependency,
}

#[derive(Debug, Clone)]
pub struct Chosen {
    pub pkg: PkgId,
    pub reason: Reason,
    /// Chosen packages with a dependency this package satisfies.
    pub required_by: Vec<PkgId>,
}

/// The installation set, sorted by package name.
#[derive(Debug)]
pub struct Resolution {
    pub packages: Vec<Chosen>,
}

fn root_of(u: &Universe, name: &str) -> Result<PkgId, ResolveError> {
    if let Some(p) = u.get(name) {
        return Ok(p);
    }
    match u.providers.get(name).map(|v| v.as_slice()) {
        Some([(p, _)]) => Ok(*p),
        Some(provs) if !provs.is_empty() => {
            let mut providers: Vec<String> = provs
                .iter()
                .map(|(p, _)| u.pkgs[*p].name.to_string())
                .collect();
            providers.sort();
            providers.dedup();
            Err(ResolveError::Ambiguous {
                name: name.into(),
                providers,
            })
        }
        _ => Err(ResolveError::UnknownPackage {
            name: name.into(),
            suggestions: u.suggest(name).into_iter().map(String::from).collect(),
        }),
    }
}

pub fn resolve(u: &Universe, req: &Request) -> Result<Resolution, ResolveError> {
    let n = u.pkgs.len();
    let mut excluded = vec![false; n];
    // Every unknown name is reported, not just the first.
    let mut unknown: Vec<(String, Vec<String>)> = Vec::new();
    for x in req.exclude {
        match u.get(x) {
            Some(p) => excluded[p] = true,
            None => unknown.push((
                x.clone(),
                u.suggest(x).into_iter().map(String::from).collect(),
            )),
        }
    }
    let mut reason: HashMap<PkgId, Reason> = HashMap::new();
    let mut includes = Vec::new();
    let mut roots = Vec::new();
    for name in req.include {
        match root_of(u, name) {
            Ok(p) => roots.push((name, p)),
            Err(ResolveError::UnknownPackage { name, suggestions }) => {
                unknown.push((name, suggestions))
            }
            Err(e) => return Err(e),
        }
    }
    match unknown.len() {
        0 => {}
        1 => {
            let (name, suggestions) = unknown.remove(0);
            return Err(ResolveError::UnknownPackage { name, suggestions });
        }
        _ => return Err(ResolveError::UnknownPackages { names: unknown }),
    }
    for (name, p) in roots {
        if excluded[p] {
            return Err(ResolveError::ExcludedRoot { name: name.clone() });
        }
        includes.push(p);
        reason.insert(p, Reason::Include);
    }
    // Pattern-selected sets come in apt's cache order.
    let mut by_id: Vec<PkgId> = (0..n).filter(|&p| u.pkgs[p].in_main_suite).collect();
    by_id.sort_by_key(|&p| u.pkgs[p].apt_id);
    let essential: Vec<PkgId> = if req.essential {
        by_id
            .iter()
            .copied()
            .filter(|&p| u.pkgs[p].essential && !excluded[p])
            .collect()
    } else {
        Vec::new()
    };
    let prio: Vec<PkgId> = by_id
        .iter()
        .copied()
        .filter(|&p| {
            (req.priority)(u.pkgs[p].priority)
                && !(req.essential && u.pkgs[p].essential)
                && !excluded[p]
        })
        .collect();
    for &p in &essential {
        reason.entry(p).or_insert(Reason::Essential);
    }
    for &p in &prio {
        reason.entry(p).or_insert(Reason::Priority);
    }

    let deps = DepCache::with_ignored(u, req.recommends, req.ignore.to_vec());
    // apt's choices, as mmdebstrap makes them: the essential set is installed
    // first, then the user's packages and the Priority set on top of it.
    let mut pass = apt::AptPass::new(&deps, &excluded);
    pass.install(&essential)?;
    pass.commit();
    pass.install(&includes.iter().chain(&prio).copied().collect::<Vec<_>>())?;
    let preferred = pass.marked;

    let provider = solve::Provider::new(&deps, &excluded, &preferred);
    let mut roots: Vec<PkgId> = essential
        .iter()
        .chain(&includes)
        .chain(&prio)
        .copied()
        .collect();
    let mut seen = vec![false; n];
    roots.retain(|&p| !std::mem::replace(&mut seen[p], true));
    let mut solver = resolvo::Solver::new(provider);
    // First ask the solver to confirm apt's own answer: where it is
    // consistent, that is exactly the result. Only where apt's greedy choice
    // is broken does the solver search further (steered by the same order).
    let apt_answer: Vec<PkgId> = roots
        .iter()
        .copied()
        .chain((0..n).filter(|&p| preferred[p] && !seen[p]))
        .collect();
    let requirements = apt_answer
        .iter()
        .map(|&p| solver.provider().root_requirement(p))
        .collect();
    let mut result = solver.solve(resolvo::Problem::new().requirements(requirements));
    if result.is_err() {
        let requirements = roots
            .iter()
            .map(|&p| solver.provider().root_requirement(p))
            .collect();
        result = solver.solve(resolvo::Problem::new().requirements(requirements));
    }
    if let Some(e) = solver.provider().error.borrow_mut().take() {
        return Err(e);
    }
    let solution = match result {
        Ok(s) => s,
        Err(resolvo::UnsolvableOrCancelled::Unsolvable(conflict)) => {
            if let Some(explanation) = explain(u, &deps, &excluded, &roots)? {
                return Err(ResolveError::Unsatisfiable {
                    explanation,
                    conflict: false,
                });
            }
            if let Some(explanation) = explain_conflict(u, &deps, &excluded, &roots)? {
                return Err(ResolveError::Unsatisfiable {
                    explanation,
                    conflict: true,
                });
            }
            let explanation = conflict.display_user_friendly(&solver).to_string();
            return Err(ResolveError::Unsatisfiable {
                explanation,
                conflict: false,
            });
        }
        Err(resolvo::UnsolvableOrCancelled::Cancelled(_)) => unreachable!("never cancelled"),
    };
    let mut chosen = vec![false; n];
    for s in &solution {
        chosen[solve::Provider::pkg_of(*s)] = true;
    }
    let mut required_by: HashMap<PkgId, Vec<PkgId>> = HashMap::new();
    for (p, _) in chosen.iter().enumerate().filter(|(_, c)| **c) {
        for g in &deps.get(p)?.groups {
            for alt in &g.alts {
                for &(q, ok) in &alt.targets {
                    if ok && chosen[q] && q != p {
                        let v = required_by.entry(q).or_default();
                        if !v.contains(&p) {
                            v.push(p);
                        }
                    }
                }
            }
        }
    }
    let mut packages: Vec<Chosen> = (0..n)
        .filter(|&p| chosen[p])
        .map(|p| Chosen {
            pkg: p,
            reason: reason.get(&p).copied().unwrap_or(Reason::Dependency),
            required_by: required_by.remove(&p).unwrap_or_default(),
        })
        .collect();
    packages.sort_by(|a, b| u.pkgs[a.pkg].name.cmp(u.pkgs[b.pkg].name));
    Ok(Resolution { packages })
}

/// Finds the shortest chain from a requested package to a dependency that
/// nothing in the archive can satisfy, and says why.
fn explain(
    u: &Universe,
    deps: &DepCache,
    excluded: &[bool],
    roots: &[PkgId],
) -> Result<Option<String>, ResolveError> {
    let n = u.pkgs.len();
    let mut parent: Vec<Option<PkgId>> = vec![None; n];
    let mut seen = vec![false; n];
    let mut queue: VecDeque<PkgId> = VecDeque::new();
    for &r in roots {
        seen[r] = true;
        queue.push_back(r);
    }
    let name_ver = |p: PkgId| format!("{} {}", u.pkgs[p].name, u.pkgs[p].version);
    while let Some(p) = queue.pop_front() {
        let d = deps.get(p)?;
        for g in d.groups.iter().filter(|g| g.critical) {
            let usable = g
                .alts
                .iter()
                .any(|a| a.targets.iter().any(|&(q, ok)| ok && !excluded[q]));
            if !usable {
                let path = chain(u, &parent, p);
                let reasons: Vec<String> = g
                    .alts
                    .iter()
                    .map(|a| {
                        let real = a.targets.iter().find(|(q, _)| u.pkgs[*q].name == a.name);
                        match real {
                            Some(&(q, _)) if excluded[q] => {
                                format!("{} is excluded by the recipe", a.name)
                            }
                            Some(&(q, _)) => format!("only {} is available", name_ver(q)),
                            None if a.targets.is_empty() => {
                                format!("no package named or providing {} exists", a.name)
                            }
                            None => format!("no provider of {} offers {}", a.name, a.text),
                        }
                    })
                    .collect();
                return Ok(Some(format!(
                    "{} depends on {} but {}\n  (pulled in by: {path})",
                    name_ver(p),
                    g.text,
                    reasons.join(", and ")
                )));
            }
            for a in &g.alts {
                for &(q, ok) in &a.targets {
                    if ok && !excluded[q] && !seen[q] {
                        seen[q] = true;
                        parent[q] = Some(p);
                        queue.push_back(q);
                    }
                }
            }
        }
    }
    Ok(None)
}

/// `root -> … -> p` by the `parent` links of a breadth-first search.
fn chain(u: &Universe, parent: &[Option<PkgId>], p: PkgId) -> String {
    let mut c = vec![p];
    while let Some(q) = parent[*c.last().unwrap()] {
        c.push(q);
    }
    c.reverse();
    c.iter()
        .map(|&q| u.pkgs[q].name)
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Finds two packages that every solution must install and that conflict
/// (Conflicts or Breaks), following only dependencies with a single usable
/// choice, and says so as two chains: "A needs X, and B conflicts with X".
fn explain_conflict(
    u: &Universe,
    deps: &DepCache,
    excluded: &[bool],
    roots: &[PkgId],
) -> Result<Option<String>, ResolveError> {
    let n = u.pkgs.len();
    let mut parent: Vec<Option<PkgId>> = vec![None; n];
    let mut forced = vec![false; n];
    let mut order: Vec<PkgId> = Vec::new();
    let mut queue: VecDeque<PkgId> = VecDeque::new();
    for &r in roots {
        if !forced[r] {
            forced[r] = true;
            queue.push_back(r);
        }
    }
    while let Some(p) = queue.pop_front() {
        order.push(p);
        for g in deps.get(p)?.groups.iter().filter(|g| g.critical) {
            let mut usable: Vec<PkgId> = g
                .alts
                .iter()
                .flat_map(|a| a.targets.iter())
                .filter(|&&(q, ok)| ok && !excluded[q])
                .map(|&(q, _)| q)
                .collect();
            usable.dedup();
            if let [q] = usable[..] {
                if q != p && !forced[q] {
                    forced[q] = true;
                    parent[q] = Some(p);
                    queue.push_back(q);
                }
            }
        }
    }
    let name_ver = |p: PkgId| format!("{} {}", u.pkgs[p].name, u.pkgs[p].version);
    // Why `x` is in: requested, or needed by its parent.
    let why = |x: PkgId| match parent[x] {
        None => format!("{} is requested", name_ver(x)),
        Some(by) => format!("{} needs {}", name_ver(by), name_ver(x)),
    };
    for &b in &order {
        for &x in &deps.get(b)?.conflicts {
            if forced[x] && x != b {
                return Ok(Some(format!(
                    "{}, and {} conflicts with {}\n  ({} pulled in by: {}; {} by: {})",
                    why(x),
                    name_ver(b),
                    u.pkgs[x].name,
                    u.pkgs[x].name,
                    chain(u, &parent, x),
                    u.pkgs[b].name,
                    chain(u, &parent, b),
                )));
            }
        }
    }
    Ok(None)
}

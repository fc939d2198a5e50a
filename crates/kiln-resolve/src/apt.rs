//! A replay of apt's classic marking algorithm (pkgDepCache::MarkInstall),
//! used only to learn which packages apt would choose.
//!
//! The solver is authoritative: it guarantees a consistent result and
//! explains failures. This pass tells it, for every choice point
//! (alternatives, virtual packages), which option apt would take, so that
//! where apt's answer is valid Kiln's answer is the same set of packages.

use std::cmp::Ordering;

use crate::deps::{DepCache, Group};
use crate::universe::PkgId;
use crate::ResolveError;

pub struct AptPass<'c, 'u, 'a> {
    deps: &'c DepCache<'u, 'a>,
    excluded: &'c [bool],
    pub marked: Vec<bool>,
    protected: Vec<bool>,
    /// Already installed on the (simulated) system.
    installed: Vec<bool>,
    /// How many marked packages declare Conflicts/Breaks against each package.
    conflicted_by: Vec<u32>,
}

impl<'c, 'u, 'a> AptPass<'c, 'u, 'a> {
    pub fn new(deps: &'c DepCache<'u, 'a>, excluded: &'c [bool]) -> Self {
        let n = deps.u.pkgs.len();
        AptPass {
            deps,
            excluded,
            marked: vec![false; n],
            protected: vec![false; n],
            installed: vec![false; n],
            conflicted_by: vec![0; n],
        }
    }

    fn set_marked(&mut self, p: PkgId, on: bool) -> Result<(), ResolveError> {
        if self.marked[p] == on {
            return Ok(());
        }
        self.marked[p] = on;
        for &q in &self.deps.get(p)?.conflicts {
            if on {
                self.conflicted_by[q] += 1;
            } else {
                self.conflicted_by[q] -= 1;
            }
        }
        Ok(())
    }

    /// Treats everything marked so far as installed, as after a dpkg run:
    /// the next [`AptPass::install`] starts from that system.
    pub fn commit(&mut self) {
        self.installed.clone_from(&self.marked);
        self.protected.iter_mut().for_each(|p| *p = false);
    }

    /// Like `apt-get install ROOTS…` from an empty system: every root is
    /// marked and protected first, then their dependencies are resolved one
    /// root at a time, depth first.
    pub fn install(&mut self, roots: &[PkgId]) -> Result<(), ResolveError> {
        for &r in roots {
            self.set_marked(r, true)?;
            self.protected[r] = true;
        }
        for &r in roots {
            self.install_deps(r)?;
        }
        Ok(())
    }

    fn satisfied(&self, g: &Group) -> bool {
        g.alts
            .iter()
            .any(|a| a.targets.iter().any(|&(q, ok)| ok && self.marked[q]))
    }

    /// apt's CompareProviders, for an empty system and a single architecture.
    fn compare(&self, a: PkgId, b: PkgId, target: &str) -> Ordering {
        let (pa, pb) = (&self.deps.u.pkgs[a], &self.deps.u.pkgs[b]);
        let first = |x: bool, y: bool| y.cmp(&x);
        first(self.protected[a], self.protected[b])
            .then(first(self.installed[a], self.installed[b]))
            .then(first(pa.name == target, pb.name == target))
            .then(first(pa.essential, pb.essential))
            .then(first(pa.important, pb.important))
            .then(pa.priority_rank().cmp(&pb.priority_rank()))
            .then(pb.apt_id.cmp(&pa.apt_id))
    }

    fn solutions(&self, g: &Group) -> Vec<PkgId> {
        let mut out: Vec<PkgId> = Vec::new();
        for alt in &g.alts {
            let mut v: Vec<PkgId> = alt
                .targets
                .iter()
                .filter(|&&(_, ok)| ok)
                .map(|&(q, _)| q)
                .collect();
            v.sort_by(|&a, &b| self.compare(a, b, &alt.name));
            for q in v {
                if out.last() != Some(&q) {
                    out.push(q);
                }
            }
        }
        out
    }

    fn installable_by_candidates(&self, p: PkgId) -> Result<bool, ResolveError> {
        let d = self.deps.get(p)?;
        Ok(d.groups.iter().filter(|g| g.critical).all(|g| {
            g.alts
                .iter()
                .any(|a| a.targets.iter().any(|&(q, ok)| ok && !self.excluded[q]))
        }))
    }

    fn mark_install(&mut self, p: PkgId) -> Result<bool, ResolveError> {
        if self.marked[p] {
            return Ok(true);
        }
        // A package something marked conflicts with is not an option (apt's
        // problem resolver would remove it again).
        if self.excluded[p] || self.conflicted_by[p] > 0 || !self.installable_by_candidates(p)? {
            return Ok(false);
        }
        let d = self.deps.get(p)?;
        for &q in &d.conflicts {
            if self.marked[q] {
                if self.protected[q] {
                    return Ok(false);
                }
                self.set_marked(q, false)?;
            }
        }
        self.set_marked(p, true)?;
        let ok = self.install_deps(p)?;
        if !ok {
            self.set_marked(p, false)?;
        }
        Ok(ok)
    }

    /// Resolves the dependencies of a marked package; false if a critical
    /// one cannot be met (the caller then discards the package).
    fn install_deps(&mut self, p: PkgId) -> Result<bool, ResolveError> {
        let d = self.deps.get(p)?;
        let was_protected = self.protected[p];
        self.protected[p] = true;
        let mut ok = true;
        for g in &d.groups {
            if self.satisfied(g) {
                continue;
            }
            let mut done = false;
            for s in self.solutions(g) {
                if self.mark_install(s)? {
                    done = true;
                    break;
                }
            }
            if !done && g.critical && !was_protected {
                ok = false;
                break;
            }
        }
        self.protected[p] = was_protected;
        Ok(ok)
    }
}

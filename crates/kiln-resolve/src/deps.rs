//! Relations of candidates, resolved against the universe once and shared by
//! the apt-preference pass and the solver.

use std::cell::RefCell;
use std::rc::Rc;

use kiln_deb::relation::fmt_group;

use crate::universe::{PkgId, Universe};
use crate::ResolveError;

/// One alternative of a dependency group: the atom's text and every package
/// that could satisfy it (`true`) or is named but does not (`false`).
#[derive(Debug)]
pub struct Alt {
    pub name: String,
    pub text: String,
    pub targets: Vec<(PkgId, bool)>,
}

#[derive(Debug)]
pub struct Group {
    pub text: String,
    pub critical: bool,
    pub alts: Vec<Alt>,
}

#[derive(Debug, Default)]
pub struct PkgDeps {
    /// Pre-Depends, Depends, then (when enabled) Recommends, in field order.
    pub groups: Vec<Group>,
    /// Candidates hit by this package's Conflicts or Breaks.
    pub conflicts: Vec<PkgId>,
}

pub struct DepCache<'u, 'a> {
    pub u: &'u Universe<'a>,
    pub recommends: bool,
    /// Dependencies on these names count as met (distroless images leave
    /// out the tools only maintainer scripts use).
    pub ignore: Vec<String>,
    cache: RefCell<Vec<Option<Rc<PkgDeps>>>>,
}

impl<'u, 'a> DepCache<'u, 'a> {
    pub fn new(u: &'u Universe<'a>, recommends: bool) -> Self {
        Self::with_ignored(u, recommends, Vec::new())
    }

    pub fn with_ignored(u: &'u Universe<'a>, recommends: bool, ignore: Vec<String>) -> Self {
        DepCache {
            u,
            recommends,
            ignore,
            cache: RefCell::new(vec![None; u.pkgs.len()]),
        }
    }

    pub fn get(&self, p: PkgId) -> Result<Rc<PkgDeps>, ResolveError> {
        if let Some(d) = &self.cache.borrow()[p] {
            return Ok(d.clone());
        }
        let d = Rc::new(self.compute(p)?);
        self.cache.borrow_mut()[p] = Some(d.clone());
        Ok(d)
    }

    fn compute(&self, p: PkgId) -> Result<PkgDeps, ResolveError> {
        let u = self.u;
        let pkg = &u.pkgs[p];
        let mut out = PkgDeps::default();
        let mut fields = vec![(pkg.pre_depends, true), (pkg.depends, true)];
        if self.recommends {
            fields.push((pkg.recommends, false));
        }
        for (field, critical) in fields {
            if field.is_empty() {
                continue;
            }
            for group in u.relations(p, field)? {
                if group
                    .iter()
                    .any(|d| self.ignore.iter().any(|i| i == d.name))
                {
                    continue;
                }
                let alts = group
                    .iter()
                    .map(|d| Alt {
                        name: d.name.to_string(),
                        text: d.to_string(),
                        targets: u.targets(d),
                    })
                    .collect();
                out.groups.push(Group {
                    text: fmt_group(&group),
                    critical,
                    alts,
                });
            }
        }
        for field in [pkg.conflicts, pkg.breaks] {
            if field.is_empty() {
                continue;
            }
            for group in u.relations(p, field)? {
                for d in &group {
                    for (q, hit) in u.targets(d) {
                        if hit && q != p && !out.conflicts.contains(&q) {
                            out.conflicts.push(q);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

//! The CDCL solver (resolvo) over the candidate universe.
//!
//! Each package name has exactly one solvable, its candidate, because apt
//! never installs a non-candidate version on its own either. A dependency
//! group becomes a union of version sets, one per (package, satisfies?)
//! pair, ordered by preference: apt's choice first.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;

use resolvo::{
    Candidates, Condition, ConditionId, ConditionalRequirement, DenseIndex, Dependencies,
    DependencyProvider, Interner, KnownDependencies, NameId, Requirement, SolvableId, SolverCache,
    StringId, VersionSetId, VersionSetUnionId,
};

use crate::deps::DepCache;
use crate::universe::PkgId;
use crate::ResolveError;

pub struct Provider<'c, 'u, 'a> {
    pub deps: &'c DepCache<'u, 'a>,
    pub excluded: &'c [bool],
    /// apt would install this package.
    pub preferred: &'c [bool],
    vsets: RefCell<Vec<(PkgId, bool)>>,
    vset_ids: RefCell<HashMap<(PkgId, bool), u32>>,
    unions: RefCell<Vec<Vec<VersionSetId>>>,
    strings: RefCell<Vec<String>>,
    pub error: RefCell<Option<ResolveError>>,
}

impl<'c, 'u, 'a> Provider<'c, 'u, 'a> {
    pub fn new(deps: &'c DepCache<'u, 'a>, excluded: &'c [bool], preferred: &'c [bool]) -> Self {
        Provider {
            deps,
            excluded,
            preferred,
            vsets: RefCell::new(Vec::new()),
            vset_ids: RefCell::new(HashMap::new()),
            unions: RefCell::new(Vec::new()),
            strings: RefCell::new(vec!["excluded by the recipe".to_string()]),
            error: RefCell::new(None),
        }
    }

    /// The sentinel name for dependencies nothing can satisfy.
    fn missing(&self) -> PkgId {
        self.deps.u.pkgs.len()
    }

    pub fn vset(&self, p: PkgId, ok: bool) -> VersionSetId {
        let mut ids = self.vset_ids.borrow_mut();
        let mut v = self.vsets.borrow_mut();
        let id = *ids.entry((p, ok)).or_insert_with(|| {
            v.push((p, ok));
            (v.len() - 1) as u32
        });
        VersionSetId(id)
    }

    fn union(&self, sets: Vec<VersionSetId>) -> Requirement {
        if sets.len() == 1 {
            return Requirement::Single(sets[0]);
        }
        let mut u = self.unions.borrow_mut();
        u.push(sets);
        Requirement::Union(VersionSetUnionId((u.len() - 1) as u32))
    }

    pub fn root_requirement(&self, p: PkgId) -> ConditionalRequirement {
        ConditionalRequirement {
            condition: None,
            requirement: Requirement::Single(self.vset(p, true)),
        }
    }

    pub fn solvable(p: PkgId) -> SolvableId {
        SolvableId::from_index(p)
    }

    pub fn pkg_of(s: SolvableId) -> PkgId {
        s.to_index()
    }

    fn name_str(&self, n: PkgId) -> &str {
        if n == self.missing() {
            "<nothing>"
        } else {
            self.deps.u.pkgs[n].name
        }
    }
}

impl Interner for Provider<'_, '_, '_> {
    type NameId = NameId;
    type SolvableId = SolvableId;

    fn display_solvable(&self, s: SolvableId) -> impl Display + '_ {
        let p = &self.deps.u.pkgs[Self::pkg_of(s)];
        format!("{} {}", p.name, p.version)
    }

    fn display_name(&self, name: NameId) -> impl Display + '_ {
        self.name_str(name.to_index()).to_string()
    }

    fn display_version_set(&self, vs: VersionSetId) -> impl Display + '_ {
        let (p, ok) = self.vsets.borrow()[vs.0 as usize];
        if p == self.missing() {
            "(no such package)".to_string()
        } else if ok {
            format!("= {}", self.deps.u.pkgs[p].version)
        } else {
            format!("(not {})", self.deps.u.pkgs[p].version)
        }
    }

    fn display_string(&self, id: StringId) -> impl Display + '_ {
        self.strings.borrow()[id.0 as usize].clone()
    }

    fn version_set_name(&self, vs: VersionSetId) -> NameId {
        NameId::from_index(self.vsets.borrow()[vs.0 as usize].0)
    }

    fn solvable_name(&self, s: SolvableId) -> NameId {
        NameId::from_index(Self::pkg_of(s))
    }

    fn version_sets_in_union(&self, u: VersionSetUnionId) -> impl Iterator<Item = VersionSetId> {
        self.unions.borrow()[u.0 as usize].clone().into_iter()
    }

    fn resolve_condition(&self, _c: ConditionId) -> Condition {
        unreachable!("Kiln does not use conditional requirements")
    }
}

impl DependencyProvider for Provider<'_, '_, '_> {
    async fn filter_candidates(
        &self,
        candidates: &[SolvableId],
        vs: VersionSetId,
        inverse: bool,
    ) -> Vec<SolvableId> {
        let (_, ok) = self.vsets.borrow()[vs.0 as usize];
        if ok != inverse {
            candidates.to_vec()
        } else {
            Vec::new()
        }
    }

    async fn get_candidates(&self, name: NameId) -> Option<Candidates> {
        let p = name.to_index();
        if p == self.missing() {
            return Some(Candidates::default());
        }
        let s = Self::solvable(p);
        Some(Candidates {
            candidates: vec![s],
            excluded: if self.excluded[p] {
                vec![(s, StringId(0))]
            } else {
                Vec::new()
            },
            ..Candidates::default()
        })
    }

    async fn sort_candidates(&self, _solver: &SolverCache<Self>, _solvables: &mut [SolvableId]) {
        // One solvable per name: nothing to order.
    }

    async fn get_dependencies(&self, s: SolvableId) -> Dependencies {
        let p = Self::pkg_of(s);
        let d = match self.deps.get(p) {
            Ok(d) => d,
            Err(e) => {
                let mut strings = self.strings.borrow_mut();
                strings.push(e.to_string());
                *self.error.borrow_mut() = Some(e);
                return Dependencies::Unknown(StringId((strings.len() - 1) as u32));
            }
        };
        let mut requirements = Vec::new();
        for g in &d.groups {
            // Recommends are wishes: only those that can be met at all are kept.
            let mut sets: Vec<(bool, VersionSetId)> = Vec::new();
            for alt in &g.alts {
                for &(q, ok) in &alt.targets {
                    if !ok && !g.critical {
                        continue;
                    }
                    let vs = self.vset(q, ok);
                    if !sets.iter().any(|(_, v)| *v == vs) {
                        sets.push((ok && self.preferred[q], vs));
                    }
                }
            }
            if !g.critical && !sets.iter().any(|(pref, _)| *pref) {
                continue;
            }
            if sets.is_empty() {
                sets.push((false, self.vset(self.missing(), false)));
            }
            // apt's choice first; the rest keep apt's alternative order.
            sets.sort_by_key(|(pref, _)| !*pref);
            requirements.push(ConditionalRequirement {
                condition: None,
                requirement: self.union(sets.into_iter().map(|(_, v)| v).collect()),
            });
        }
        let constrains = d.conflicts.iter().map(|&q| self.vset(q, false)).collect();
        Dependencies::Known(KnownDependencies {
            requirements,
            constrains,
        })
    }
}

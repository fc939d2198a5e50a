//! Solver behaviour: what a user sees when Kiln picks packages, checked
//! against what apt 2.6 (as mmdebstrap drives it) would install.
//!
//! Every test builds small `Packages` indices from compact specs, resolves a
//! request and compares the sorted "name version" list (or the error).

use kiln_resolve::{resolve, IndexInput, Reason, Request, Resolution, ResolveError, Universe};

// ---------------------------------------------------------------------------
// Index builder
// ---------------------------------------------------------------------------

/// One `Packages` stanza, built field by field.
struct Spec {
    name: &'static str,
    fields: Vec<(&'static str, String)>,
}

fn pkg(name: &'static str, version: &str) -> Spec {
    Spec {
        name,
        fields: vec![
            ("Package", name.to_string()),
            ("Version", version.to_string()),
            ("Architecture", "amd64".to_string()),
        ],
    }
}

impl Spec {
    fn field(mut self, key: &'static str, value: &str) -> Self {
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(f) => f.1 = value.to_string(),
            None => self.fields.push((key, value.to_string())),
        }
        self
    }
    fn arch(self, a: &str) -> Self {
        self.field("Architecture", a)
    }
    fn depends(self, v: &str) -> Self {
        self.field("Depends", v)
    }
    fn pre_depends(self, v: &str) -> Self {
        self.field("Pre-Depends", v)
    }
    fn recommends(self, v: &str) -> Self {
        self.field("Recommends", v)
    }
    fn conflicts(self, v: &str) -> Self {
        self.field("Conflicts", v)
    }
    fn breaks(self, v: &str) -> Self {
        self.field("Breaks", v)
    }
    fn provides(self, v: &str) -> Self {
        self.field("Provides", v)
    }
    fn priority(self, v: &str) -> Self {
        self.field("Priority", v)
    }
    fn essential(self) -> Self {
        self.field("Essential", "yes")
    }
    fn multi_arch(self, v: &str) -> Self {
        self.field("Multi-Arch", v)
    }

    fn stanza(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(&format!("{k}: {v}\n"));
        }
        let version = &self.fields[1].1;
        let arch = &self.fields[2].1;
        out.push_str(&format!(
            "Filename: pool/main/{}/{}_{}_{}.deb\nSize: 1000\nInstalled-Size: 4\nSHA256: {}\n",
            &self.name[..1],
            self.name,
            version,
            arch,
            "ab".repeat(32)
        ));
        out
    }
}

/// The text of a `Packages` file holding these stanzas, in this order.
fn index(specs: Vec<Spec>) -> String {
    specs
        .iter()
        .map(Spec::stanza)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A universe made of one main-suite index at pin 500 for amd64.
fn universe(text: &str) -> Universe<'_> {
    Universe::build(
        &[IndexInput {
            release: 0,
            pin: 500,
            main_suite: true,
            text,
        }],
        "amd64",
    )
    .expect("index builds")
}

// ---------------------------------------------------------------------------
// Request helpers
// ---------------------------------------------------------------------------

/// Request knobs; everything off by default.
#[derive(Default)]
struct Opts {
    exclude: &'static [&'static str],
    /// Debian priorities that belong to the base set.
    priorities: &'static [&'static str],
    essential: bool,
    recommends: bool,
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn run(u: &Universe, include: &[&str], opts: &Opts) -> Result<Resolution, ResolveError> {
    let include = strings(include);
    let exclude = strings(opts.exclude);
    let priorities = opts.priorities;
    resolve(
        u,
        &Request {
            include: &include,
            exclude: &exclude,
            priority: &|p| priorities.contains(&p),
            essential: opts.essential,
            recommends: opts.recommends,
            ignore: &[],
        },
    )
}

/// The sorted "name version" list a user would see.
fn listing(u: &Universe, r: &Resolution) -> Vec<String> {
    let mut v: Vec<String> = r
        .packages
        .iter()
        .map(|c| format!("{} {}", u.pkgs[c.pkg].name, u.pkgs[c.pkg].version))
        .collect();
    v.sort();
    v
}

/// Resolves `include` with `opts` and returns the listing; panics on error.
fn installs(u: &Universe, include: &[&str], opts: &Opts) -> Vec<String> {
    match run(u, include, opts) {
        Ok(r) => listing(u, &r),
        Err(e) => panic!("resolution of {include:?} failed: {e}"),
    }
}

/// Resolves `include` with default options.
fn plain(u: &Universe, include: &[&str]) -> Vec<String> {
    installs(u, include, &Opts::default())
}

/// Resolves `include`, expecting an error.
fn fails(u: &Universe, include: &[&str], opts: &Opts) -> ResolveError {
    match run(u, include, opts) {
        Ok(r) => panic!(
            "expected an error for {include:?}, got {:?}",
            listing(u, &r)
        ),
        Err(e) => e,
    }
}

fn unsatisfiable_text(e: ResolveError) -> String {
    match e {
        ResolveError::Unsatisfiable { explanation, .. } => explanation,
        other => panic!("expected Unsatisfiable, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Depends closure
// ---------------------------------------------------------------------------

#[test]
fn depends_closure_installs_exactly_what_is_needed() {
    let text = index(vec![
        pkg("app", "1.0")
            .depends("libfoo (>= 1.0), libbar")
            .pre_depends("init-helper"),
        pkg("libfoo", "1.2").depends("libc6"),
        pkg("libbar", "2.0").depends("libc6 (>= 2.36)"),
        pkg("libc6", "2.36-9"),
        pkg("init-helper", "0.5"),
        pkg("unrelated", "1.0").depends("libc6"),
        pkg("also-unrelated", "3.0"),
    ]);
    let u = universe(&text);
    assert_eq!(
        plain(&u, &["app"]),
        [
            "app 1.0",
            "init-helper 0.5",
            "libbar 2.0",
            "libc6 2.36-9",
            "libfoo 1.2"
        ]
    );
}

// ---------------------------------------------------------------------------
// 2. OR-groups
// ---------------------------------------------------------------------------

#[test]
fn or_group_takes_first_installable_alternative() {
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "b 1"]);
}

#[test]
fn or_group_falls_back_when_first_alternative_is_missing() {
    let text = index(vec![pkg("app", "1").depends("nosuch | c"), pkg("c", "1")]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "c 1"]);
}

#[test]
fn or_group_falls_back_when_first_alternative_is_excluded() {
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    let opts = Opts {
        exclude: &["b"],
        ..Opts::default()
    };
    assert_eq!(installs(&u, &["app"], &opts), ["app 1", "c 1"]);
}

#[test]
fn or_group_falls_back_when_first_alternative_version_is_too_old() {
    let text = index(vec![
        pkg("app", "1").depends("b (>= 2.0) | c"),
        pkg("b", "1.5"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "c 1"]);
}

#[test]
fn or_group_falls_back_when_first_alternative_is_not_installable() {
    // apt's IsInstallOkDependenciesSatisfiableByCandidates: b's own Depends
    // can never be met, so b is skipped.
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1").depends("missing-lib"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "c 1"]);
}

// ---------------------------------------------------------------------------
// 3. OR-group already satisfied
// ---------------------------------------------------------------------------

#[test]
fn or_group_satisfied_by_another_root_installs_nothing_extra() {
    // All requested packages are marked before any dependency is looked at,
    // so `c` satisfies `b | c` whichever order the user lists them in.
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app", "c"]), ["app 1", "c 1"]);
    assert_eq!(plain(&u, &["c", "app"]), ["app 1", "c 1"]);
}

#[test]
fn or_group_satisfied_by_dependency_of_an_earlier_root() {
    // `other` comes first in apt's cache, its dependency `c` is marked before
    // `app`'s `b | c` is looked at, so `b` is not needed.
    let text = index(vec![
        pkg("other", "1").depends("c"),
        pkg("app", "1").depends("b | c"),
        pkg("b", "1"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["other", "app"]), ["app 1", "c 1", "other 1"]);
}

#[test]
fn or_group_not_satisfied_by_dependency_of_a_later_root() {
    // `app` is processed first: `b | c` is unsatisfied at that moment, so apt
    // installs `b`; `other` then pulls in `c` too. apt keeps both (`b` is
    // still reachable from `app`, so it is not garbage).
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("other", "1").depends("c"),
        pkg("b", "1"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(
        plain(&u, &["app", "other"]),
        ["app 1", "b 1", "c 1", "other 1"]
    );
}

#[test]
fn roots_dependencies_are_processed_in_request_order() {
    // apt 2.6 marks every requested package first, then resolves their
    // dependencies in command-line order (TryToInstall::doAutoInstallLater is
    // an APT::PackageVector). `other` comes first and pulls in `c`, which then
    // already satisfies `app`'s `b | c`.
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("other", "1").depends("c"),
        pkg("b", "1"),
        pkg("c", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["other", "app"]), ["app 1", "c 1", "other 1"]);
}

// ---------------------------------------------------------------------------
// 4. Virtual packages
// ---------------------------------------------------------------------------

#[test]
fn virtual_dependency_with_one_provider() {
    let text = index(vec![
        pkg("app", "1").depends("mail-transport-agent"),
        pkg("exim4", "4.96").provides("mail-transport-agent"),
        pkg("bystander", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "exim4 4.96"]);
}

#[test]
fn virtual_dependency_prefers_real_package_of_that_name() {
    // `x` is created before `better` (so it loses the final tie-break) and has
    // a worse priority, but it is the real package named by the dependency.
    let text = index(vec![
        pkg("app", "1").depends("x"),
        pkg("x", "1").priority("extra"),
        pkg("better", "1").provides("x").priority("required"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "x 1"]);
}

#[test]
fn virtual_dependency_prefers_essential_provider() {
    let text = index(vec![
        pkg("app", "1").depends("v"),
        pkg("ess", "1")
            .provides("v")
            .priority("optional")
            .essential(),
        pkg("plain", "1").provides("v").priority("required"),
    ]);
    let u = universe(&text);
    // essential=false: `ess` is only installed if chosen as the provider.
    assert_eq!(plain(&u, &["app"]), ["app 1", "ess 1"]);
}

#[test]
fn virtual_dependency_prefers_higher_priority_provider() {
    let text = index(vec![
        pkg("app", "1").depends("v"),
        pkg("imp", "1").provides("v").priority("important"),
        pkg("opt", "1").provides("v").priority("optional"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "imp 1"]);
}

#[test]
fn virtual_dependency_treats_missing_priority_as_best() {
    // apt stores a missing Priority as 0, which sorts before required (1).
    let text = index(vec![
        pkg("app", "1").depends("v"),
        pkg("nopri", "1").provides("v"),
        pkg("req", "1").provides("v").priority("required"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "nopri 1"]);
}

#[test]
fn virtual_dependency_tie_goes_to_later_created_package() {
    let text = index(vec![
        pkg("app", "1").depends("v"),
        pkg("first", "1").provides("v").priority("optional"),
        pkg("second", "1").provides("v").priority("optional"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "second 1"]);

    // Same packages, other creation order: the winner follows.
    let text = index(vec![
        pkg("app", "1").depends("v"),
        pkg("second", "1").provides("v").priority("optional"),
        pkg("first", "1").provides("v").priority("optional"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "first 1"]);
}

#[test]
fn versioned_virtual_dependency_needs_versioned_provides() {
    // `unver` and `old` would win the tie-break (created later) but cannot
    // satisfy `v (>= 2)`.
    let text = index(vec![
        pkg("app", "1").depends("v (>= 2)"),
        pkg("good", "1").provides("v (= 2.1)"),
        pkg("old", "1").provides("v (= 1.0)"),
        pkg("unver", "1").provides("v"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "good 1"]);
}

#[test]
fn unversioned_provides_never_satisfies_versioned_dependency() {
    let text = index(vec![
        pkg("app", "1").depends("v (>= 1)"),
        pkg("unver", "9").provides("v"),
    ]);
    let u = universe(&text);
    let e = fails(&u, &["app"], &Opts::default());
    let text = unsatisfiable_text(e);
    assert!(text.contains("app 1 depends on v (>= 1)"), "{text}");
    assert!(text.contains("no provider of v offers v (>= 1)"), "{text}");
}

// ---------------------------------------------------------------------------
// 5. Conflicts and Breaks
// ---------------------------------------------------------------------------

#[test]
fn conflicts_of_first_alternative_with_a_root_forces_second() {
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1").conflicts("tool"),
        pkg("c", "1"),
        pkg("tool", "1"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app", "tool"]), ["app 1", "c 1", "tool 1"]);
}

#[test]
fn breaks_of_first_alternative_with_a_root_forces_second() {
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1").breaks("tool (<< 2)"),
        pkg("c", "1"),
        pkg("tool", "1.5"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app", "tool"]), ["app 1", "c 1", "tool 1.5"]);
}

#[test]
fn root_conflicting_with_first_alternative_forces_second() {
    // The Conflicts is declared by the root this time.
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1"),
        pkg("c", "1"),
        pkg("tool", "1").conflicts("b"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app", "tool"]), ["app 1", "c 1", "tool 1"]);
}

#[test]
fn versioned_breaks_that_does_not_match_is_harmless() {
    let text = index(vec![
        pkg("app", "1").depends("b | c"),
        pkg("b", "1").breaks("tool (<< 1.0)"),
        pkg("c", "1"),
        pkg("tool", "1.5"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app", "tool"]), ["app 1", "b 1", "tool 1.5"]);
}

#[test]
fn provider_conflicting_with_its_own_virtual_is_installable() {
    // The usual mail-transport-agent pattern.
    let text = index(vec![
        pkg("app", "1").depends("mail-transport-agent"),
        pkg("exim4", "4")
            .provides("mail-transport-agent")
            .conflicts("mail-transport-agent"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "exim4 4"]);
}

#[test]
fn roots_conflicting_with_each_other_are_unsatisfiable() {
    let text = index(vec![pkg("a", "1").conflicts("b"), pkg("b", "1")]);
    let u = universe(&text);
    let e = fails(&u, &["a", "b"], &Opts::default());
    assert!(matches!(e, ResolveError::Unsatisfiable { .. }), "{e:?}");
    let e = fails(&u, &["b", "a"], &Opts::default());
    assert!(matches!(e, ResolveError::Unsatisfiable { .. }), "{e:?}");
}

#[test]
fn a_conflict_is_explained_as_two_chains() {
    // web needs libssl-old through a library; tool conflicts with it.
    let text = index(vec![
        pkg("web", "1").depends("libweb"),
        pkg("libweb", "2").depends("libssl-old (>= 1)"),
        pkg("libssl-old", "1.1"),
        pkg("tool", "3").conflicts("libssl-old"),
    ]);
    let u = universe(&text);
    let e = fails(&u, &["web", "tool"], &Opts::default());
    assert!(
        matches!(e, ResolveError::Unsatisfiable { conflict: true, .. }),
        "{e:?}"
    );
    let hint = e.hint().unwrap();
    assert!(!hint.contains("missing version"), "{hint}");
    let text = unsatisfiable_text(e);
    assert!(
        text.contains("libweb 2 needs libssl-old 1.1, and tool 3 conflicts with libssl-old"),
        "{text}"
    );
    assert!(
        text.contains("libssl-old pulled in by: web -> libweb -> libssl-old; tool by: tool"),
        "{text}"
    );
    // Two requested packages: "A is requested".
    let text = index(vec![pkg("a", "1").conflicts("b"), pkg("b", "1")]);
    let u = universe(&text);
    let text = unsatisfiable_text(fails(&u, &["b", "a"], &Opts::default()));
    assert!(
        text.starts_with("b 1 is requested, and a 1 conflicts with b"),
        "{text}"
    );
}

#[test]
fn roots_conflicting_through_a_virtual_are_unsatisfiable() {
    let text = index(vec![
        pkg("a", "1").conflicts("v"),
        pkg("b", "1").provides("v"),
    ]);
    let u = universe(&text);
    let e = fails(&u, &["a", "b"], &Opts::default());
    assert!(matches!(e, ResolveError::Unsatisfiable { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------
// 6. Candidate selection across releases
// ---------------------------------------------------------------------------

fn two_releases<'a>(main: &'a str, updates: &'a str, updates_pin: i32) -> Universe<'a> {
    Universe::build(
        &[
            IndexInput {
                release: 0,
                pin: 500,
                main_suite: true,
                text: main,
            },
            IndexInput {
                release: 1,
                pin: updates_pin,
                main_suite: false,
                text: updates,
            },
        ],
        "amd64",
    )
    .expect("indices build")
}

#[test]
fn same_pin_higher_version_wins() {
    let main = index(vec![pkg("app", "1.0").depends("lib"), pkg("lib", "1.0")]);
    let updates = index(vec![pkg("lib", "1.0+deb12u1")]);
    let u = two_releases(&main, &updates, 500);
    assert_eq!(plain(&u, &["app"]), ["app 1.0", "lib 1.0+deb12u1"]);
    let lib = u.get("lib").unwrap();
    assert_eq!(u.pkgs[lib].release, 1);

    // Order of the indices does not matter at equal pins.
    let u = Universe::build(
        &[
            IndexInput {
                release: 1,
                pin: 500,
                main_suite: false,
                text: &updates,
            },
            IndexInput {
                release: 0,
                pin: 500,
                main_suite: true,
                text: &main,
            },
        ],
        "amd64",
    )
    .unwrap();
    assert_eq!(plain(&u, &["app"]), ["app 1.0", "lib 1.0+deb12u1"]);
}

#[test]
fn not_automatic_release_loses_even_with_higher_version() {
    let main = index(vec![pkg("app", "1.0").depends("lib"), pkg("lib", "1.0")]);
    let backports = index(vec![pkg("lib", "2.0~bpo12+1"), pkg("only-bpo", "3.0")]);
    let u = two_releases(&main, &backports, 1);
    assert_eq!(plain(&u, &["app"]), ["app 1.0", "lib 1.0"]);
    assert_eq!(u.pkgs[u.get("lib").unwrap()].release, 0);
    // A package only found there is still its own candidate.
    assert_eq!(plain(&u, &["only-bpo"]), ["only-bpo 3.0"]);
}

#[test]
fn versioned_dependency_cannot_reach_a_non_candidate_version() {
    // apt installs candidates only: lib 2.0 sits in a pin-1 release, so
    // `lib (>= 2)` is unsatisfiable without selecting that release.
    let main = index(vec![
        pkg("app", "1.0").depends("lib (>= 2)"),
        pkg("lib", "1.0"),
    ]);
    let backports = index(vec![pkg("lib", "2.0~bpo12+1")]);
    let u = two_releases(&main, &backports, 1);
    let text = unsatisfiable_text(fails(&u, &["app"], &Opts::default()));
    assert!(text.contains("but only lib 1.0 is available"), "{text}");
}

// ---------------------------------------------------------------------------
// 7. Priority and Essential sets
// ---------------------------------------------------------------------------

#[test]
fn priority_set_comes_from_main_suite_only() {
    let main = index(vec![
        pkg("base-files", "12").priority("required"),
        pkg("mawk", "1.3").priority("required"),
        pkg("vim", "9").priority("optional"),
        pkg("less", "590").priority("important"),
    ]);
    let updates = index(vec![
        pkg("newly-required", "1").priority("required"),
        pkg("mawk", "1.3.4").priority("required"),
    ]);
    let u = two_releases(&main, &updates, 500);
    let opts = Opts {
        priorities: &["required"],
        ..Opts::default()
    };
    // mawk is in the main suite, so it belongs to the set (at its candidate
    // version); newly-required is only in -updates and does not.
    assert_eq!(installs(&u, &[], &opts), ["base-files 12", "mawk 1.3.4"]);

    let opts = Opts {
        priorities: &["required", "important"],
        ..Opts::default()
    };
    assert_eq!(
        installs(&u, &[], &opts),
        ["base-files 12", "less 590", "mawk 1.3.4"]
    );
}

#[test]
fn essential_packages_follow_the_essential_flag() {
    let text = index(vec![
        pkg("dpkg", "1.21").essential().priority("required"),
        pkg("coreutils", "9.1")
            .essential()
            .priority("required")
            .depends("libacl1"),
        pkg("libacl1", "2.3").priority("optional"),
        pkg("app", "1"),
    ]);
    let u = universe(&text);
    let on = Opts {
        essential: true,
        ..Opts::default()
    };
    assert_eq!(
        installs(&u, &["app"], &on),
        ["app 1", "coreutils 9.1", "dpkg 1.21", "libacl1 2.3"]
    );
    assert_eq!(plain(&u, &["app"]), ["app 1"]);
}

#[test]
fn essential_packages_only_come_from_main_suite() {
    let main = index(vec![pkg("dpkg", "1.21").essential()]);
    let updates = index(vec![pkg("new-essential", "1").essential()]);
    let u = two_releases(&main, &updates, 500);
    let opts = Opts {
        essential: true,
        ..Opts::default()
    };
    assert_eq!(installs(&u, &[], &opts), ["dpkg 1.21"]);
}

#[test]
fn priority_set_without_essential_pass_still_includes_required_essentials() {
    // With the Essential pass off, `Priority: required` must still select
    // every required package of the main suite, Essential or not (as
    // `apt-get install ?priority(required)` would).
    let text = index(vec![
        pkg("dpkg", "1.21").essential().priority("required"),
        pkg("base-files", "12").priority("required"),
    ]);
    let u = universe(&text);
    let opts = Opts {
        priorities: &["required"],
        essential: false,
        ..Opts::default()
    };
    assert_eq!(installs(&u, &[], &opts), ["base-files 12", "dpkg 1.21"]);
}

// ---------------------------------------------------------------------------
// 8. Recommends
// ---------------------------------------------------------------------------

fn recommends_index() -> String {
    index(vec![
        pkg("app", "1")
            .depends("lib")
            .recommends("helper, ghost, broken"),
        pkg("lib", "1"),
        pkg("helper", "1").depends("helper-data"),
        pkg("helper-data", "1"),
        pkg("broken", "1").depends("not-in-archive"),
    ])
}

#[test]
fn recommends_are_ignored_when_disabled() {
    let text = recommends_index();
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "lib 1"]);
}

#[test]
fn recommends_are_installed_when_enabled_and_uninstallable_ones_skipped() {
    let text = recommends_index();
    let u = universe(&text);
    let opts = Opts {
        recommends: true,
        ..Opts::default()
    };
    // `ghost` does not exist, `broken` cannot be installed: both skipped.
    assert_eq!(
        installs(&u, &["app"], &opts),
        ["app 1", "helper 1", "helper-data 1", "lib 1"]
    );
}

#[test]
fn recommends_with_unsatisfiable_version_is_skipped() {
    let text = index(vec![
        pkg("app", "1").recommends("helper (>= 2)"),
        pkg("helper", "1"),
    ]);
    let u = universe(&text);
    let opts = Opts {
        recommends: true,
        ..Opts::default()
    };
    assert_eq!(installs(&u, &["app"], &opts), ["app 1"]);
}

#[test]
fn recommends_conflicting_with_a_requested_package_is_dropped_not_an_error() {
    // `tool` (requested) conflicts with `helper`, which `app` only recommends.
    // apt drops the recommendation (MarkInstall of `tool` unmarks `helper`,
    // which nothing requires); it must not make the request fail.
    let text = index(vec![
        pkg("app", "1").recommends("helper"),
        pkg("helper", "1"),
        pkg("tool", "1").conflicts("helper"),
    ]);
    let u = universe(&text);
    let opts = Opts {
        recommends: true,
        ..Opts::default()
    };
    assert_eq!(installs(&u, &["app", "tool"], &opts), ["app 1", "tool 1"]);
}

#[test]
fn recommends_of_dependencies_are_followed() {
    let text = index(vec![
        pkg("app", "1").depends("lib"),
        pkg("lib", "1").recommends("lib-data"),
        pkg("lib-data", "1"),
    ]);
    let u = universe(&text);
    let opts = Opts {
        recommends: true,
        ..Opts::default()
    };
    assert_eq!(
        installs(&u, &["app"], &opts),
        ["app 1", "lib 1", "lib-data 1"]
    );
    assert_eq!(plain(&u, &["app"]), ["app 1", "lib 1"]);
}

// ---------------------------------------------------------------------------
// 9. Errors
// ---------------------------------------------------------------------------

#[test]
fn unknown_package_suggests_near_names() {
    let text = index(vec![pkg("nginx", "1.22"), pkg("curl", "7.88")]);
    let u = universe(&text);
    match fails(&u, &["ngnix"], &Opts::default()) {
        ResolveError::UnknownPackage { name, suggestions } => {
            assert_eq!(name, "ngnix");
            assert_eq!(suggestions, ["nginx"]);
        }
        other => panic!("expected UnknownPackage, got {other:?}"),
    }
    let e = fails(&u, &["ngnix"], &Opts::default());
    assert_eq!(e.hint().as_deref(), Some("did you mean `nginx`?"));

    // Nothing close: no suggestion.
    match fails(&u, &["zzzzzz"], &Opts::default()) {
        ResolveError::UnknownPackage { suggestions, .. } => assert!(suggestions.is_empty()),
        other => panic!("expected UnknownPackage, got {other:?}"),
    }
}

#[test]
fn unknown_excluded_package_is_reported() {
    let text = index(vec![pkg("nginx", "1.22")]);
    let u = universe(&text);
    let opts = Opts {
        exclude: &["ngnix"],
        ..Opts::default()
    };
    assert!(matches!(
        fails(&u, &["nginx"], &opts),
        ResolveError::UnknownPackage { name, .. } if name == "ngnix"
    ));
}

#[test]
fn virtual_with_several_providers_as_include_is_ambiguous() {
    let text = index(vec![
        pkg("postfix", "3.7").provides("mail-transport-agent"),
        pkg("exim4-daemon-light", "4.96").provides("mail-transport-agent"),
    ]);
    let u = universe(&text);
    match fails(&u, &["mail-transport-agent"], &Opts::default()) {
        ResolveError::Ambiguous { name, providers } => {
            assert_eq!(name, "mail-transport-agent");
            assert_eq!(providers, ["exim4-daemon-light", "postfix"]);
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
}

#[test]
fn virtual_with_one_provider_as_include_installs_the_provider() {
    let text = index(vec![pkg("postfix", "3.7").provides("mail-transport-agent")]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["mail-transport-agent"]), ["postfix 3.7"]);
}

#[test]
fn included_and_excluded_is_an_error() {
    let text = index(vec![pkg("vim", "9")]);
    let u = universe(&text);
    let opts = Opts {
        exclude: &["vim"],
        ..Opts::default()
    };
    assert!(matches!(
        fails(&u, &["vim"], &opts),
        ResolveError::ExcludedRoot { name } if name == "vim"
    ));
}

#[test]
fn unsatisfiable_versioned_dependency_explains_the_chain() {
    let text = index(vec![
        pkg("app", "1").depends("mid"),
        pkg("mid", "2").depends("lib (>= 3)"),
        pkg("lib", "2.5"),
    ]);
    let u = universe(&text);
    let text = unsatisfiable_text(fails(&u, &["app"], &Opts::default()));
    assert!(
        text.contains("mid 2 depends on lib (>= 3) but only lib 2.5 is available"),
        "{text}"
    );
    assert!(text.contains("(pulled in by: app -> mid)"), "{text}");
}

#[test]
fn dependency_on_missing_package_is_explained() {
    let text = index(vec![pkg("app", "1").depends("nosuch")]);
    let u = universe(&text);
    let text = unsatisfiable_text(fails(&u, &["app"], &Opts::default()));
    assert!(text.contains("app 1 depends on nosuch"), "{text}");
    assert!(
        text.contains("no package named or providing nosuch exists"),
        "{text}"
    );
}

#[test]
fn dependency_on_excluded_package_is_explained() {
    let text = index(vec![pkg("app", "1").depends("lib"), pkg("lib", "1")]);
    let u = universe(&text);
    let opts = Opts {
        exclude: &["lib"],
        ..Opts::default()
    };
    let text = unsatisfiable_text(fails(&u, &["app"], &opts));
    assert!(text.contains("app 1 depends on lib"), "{text}");
    assert!(text.contains("lib is excluded"), "{text}");
}

#[test]
fn index_without_sha256_is_rejected() {
    let text = "Package: a\nVersion: 1\nArchitecture: amd64\nFilename: pool/a.deb\n";
    let e = Universe::build(
        &[IndexInput {
            release: 0,
            pin: 500,
            main_suite: true,
            text,
        }],
        "amd64",
    )
    .err()
    .expect("missing SHA256 is an error");
    assert!(matches!(e, ResolveError::BadIndex(_)), "{e:?}");
}

// ---------------------------------------------------------------------------
// 10. reason and required_by
// ---------------------------------------------------------------------------

#[test]
fn reason_and_required_by_are_reported() {
    let text = index(vec![
        pkg("dpkg", "1.21").essential().priority("required"),
        pkg("base-files", "12").priority("required"),
        pkg("app", "1").depends("lib, dpkg").recommends("extra"),
        pkg("lib", "1").depends("dpkg | base-files"),
        pkg("extra", "1"),
        pkg("tool", "1").essential(),
    ]);
    let u = universe(&text);
    let include = strings(&["app", "tool"]);
    let r = resolve(
        &u,
        &Request {
            include: &include,
            exclude: &[],
            priority: &|p| p == "required",
            essential: true,
            recommends: true,
            ignore: &[],
        },
    )
    .unwrap();
    let mut seen: Vec<(String, Reason, Vec<String>)> = r
        .packages
        .iter()
        .map(|c| {
            let mut by: Vec<String> = c
                .required_by
                .iter()
                .map(|&q| u.pkgs[q].name.to_string())
                .collect();
            by.sort();
            (u.pkgs[c.pkg].name.to_string(), c.reason, by)
        })
        .collect();
    seen.sort();
    let expect = |n: &str, r: Reason, by: &[&str]| (n.to_string(), r, strings(by));
    assert_eq!(
        seen,
        [
            expect("app", Reason::Include, &[]),
            // base-files satisfies lib's `dpkg | base-files` too.
            expect("base-files", Reason::Priority, &["lib"]),
            expect("dpkg", Reason::Essential, &["app", "lib"]),
            expect("extra", Reason::Dependency, &["app"]),
            expect("lib", Reason::Dependency, &["app"]),
            // Requested and Essential: the request is the reason.
            expect("tool", Reason::Include, &[]),
        ]
    );
    // The resolution is sorted by package name.
    let names: Vec<&str> = r.packages.iter().map(|c| u.pkgs[c.pkg].name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

// ---------------------------------------------------------------------------
// 11. Architectures
// ---------------------------------------------------------------------------

#[test]
fn foreign_architecture_stanzas_are_ignored() {
    let text = index(vec![
        pkg("app", "1").depends("lib, data"),
        pkg("lib", "1.0"),
        pkg("lib", "9.0").arch("i386"),
        pkg("data", "1").arch("all"),
        pkg("armonly", "1").arch("arm64"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "data 1", "lib 1.0"]);
    assert!(matches!(
        fails(&u, &["armonly"], &Opts::default()),
        ResolveError::UnknownPackage { .. }
    ));
}

#[test]
fn any_qualified_dependency_is_satisfied_by_native_multi_arch_allowed_package() {
    let text = index(vec![
        pkg("app", "1").depends("python3:any (>= 3.11)"),
        pkg("python3", "3.11.2").multi_arch("allowed"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "python3 3.11.2"]);
}

#[test]
fn any_qualified_dependency_needs_multi_arch_allowed() {
    // apt only gives `Multi-Arch: allowed` packages the implicit `pkg:any`
    // provide; dpkg refuses such a dependency on other packages as well.
    let text = index(vec![
        pkg("app", "1").depends("perl:any"),
        pkg("perl", "5.36"),
    ]);
    let u = universe(&text);
    let e = fails(&u, &["app"], &Opts::default());
    assert!(matches!(e, ResolveError::Unsatisfiable { .. }), "{e:?}");
}

#[test]
fn native_qualified_dependency_is_satisfied_by_arch_all_package() {
    let text = index(vec![
        pkg("app", "1").depends("data:amd64"),
        pkg("data", "1").arch("all"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["app"]), ["app 1", "data 1"]);
}

// ---------------------------------------------------------------------------
// 12. Cycles
// ---------------------------------------------------------------------------

#[test]
fn dependency_cycle_resolves() {
    let text = index(vec![
        pkg("a", "1").depends("b"),
        pkg("b", "1").depends("a"),
        pkg("c", "1").pre_depends("d"),
        pkg("d", "1").depends("c"),
    ]);
    let u = universe(&text);
    assert_eq!(plain(&u, &["a"]), ["a 1", "b 1"]);
    assert_eq!(plain(&u, &["b"]), ["a 1", "b 1"]);
    assert_eq!(plain(&u, &["c"]), ["c 1", "d 1"]);
}

// ---------------------------------------------------------------------------
// 13. Determinism
// ---------------------------------------------------------------------------

#[test]
fn resolving_twice_gives_the_same_result() {
    let text = index(vec![
        pkg("dpkg", "1.21").essential().priority("required"),
        pkg("base", "1").priority("required").depends("v1 | v2"),
        pkg("app", "1")
            .depends("v1, x | y, z (>= 2) | w")
            .recommends("r1 | r2, r3"),
        pkg("p1", "1").provides("v1").priority("optional"),
        pkg("p2", "1").provides("v1").priority("optional"),
        pkg("p3", "1").provides("v1, v2").priority("optional"),
        pkg("x", "1").conflicts("p2"),
        pkg("y", "1"),
        pkg("z", "1"),
        pkg("w", "1").depends("p3"),
        pkg("r1", "1").depends("missing"),
        pkg("r2", "1"),
        pkg("r3", "1").depends("a1 | a2"),
        pkg("a1", "1"),
        pkg("a2", "1"),
    ]);
    let detail = |u: &Universe, r: &Resolution| -> Vec<String> {
        r.packages
            .iter()
            .map(|c| {
                let by: Vec<&str> = c.required_by.iter().map(|&q| u.pkgs[q].name).collect();
                format!(
                    "{} {} {:?} {:?}",
                    u.pkgs[c.pkg].name, u.pkgs[c.pkg].version, c.reason, by
                )
            })
            .collect()
    };
    let opts = Opts {
        priorities: &["required"],
        essential: true,
        recommends: true,
        ..Opts::default()
    };
    let u1 = universe(&text);
    let first = detail(&u1, &run(&u1, &["app"], &opts).unwrap());
    let again = detail(&u1, &run(&u1, &["app"], &opts).unwrap());
    let u2 = universe(&text);
    let rebuilt = detail(&u2, &run(&u2, &["app"], &opts).unwrap());
    assert_eq!(first, again);
    assert_eq!(first, rebuilt);
    for _ in 0..5 {
        let u = universe(&text);
        assert_eq!(first, detail(&u, &run(&u, &["app"], &opts).unwrap()));
    }
}

#[test]
fn ignored_dependencies_count_as_met() {
    // Distroless images drop tools only maintainer scripts use.
    let text = index(vec![
        pkg("tzdata", "1").depends("debconf (>= 0.5) | debconf-2.0"),
        pkg("python", "1").depends("tzdata, dpkg (>= 1.13)"),
        pkg("debconf", "1"),
        pkg("dpkg", "1"),
    ]);
    let u = universe(&text);
    let include = strings(&["python"]);
    let ignore = strings(&["dpkg", "debconf", "debconf-2.0"]);
    let r = resolve(
        &u,
        &Request {
            include: &include,
            exclude: &[],
            priority: &|_| false,
            essential: false,
            recommends: false,
            ignore: &ignore,
        },
    )
    .unwrap();
    let names: Vec<&str> = r.packages.iter().map(|c| u.pkgs[c.pkg].name).collect();
    assert_eq!(names, ["python", "tzdata"]);
}

//! Where each value of a composed recipe comes from (`kiln show`), and
//! every unknown key of a recipe file found in one pass.
//!
//! Both read the files as TOML with positions, independently of the typed
//! parser; the merge rules below mirror [`crate::Recipe::load`]'s (a test
//! checks that the traced values and the loaded recipe agree).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::RecipeError;
use crate::recipe::{did_you_mean, recipe_keys};

/// One value of the composed recipe and the file (and line) that set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Setting {
    /// Dotted key (`image.suite`); list elements are one setting each
    /// (`packages.include`, `source`).
    pub key: String,
    /// The value as TOML.
    pub value: String,
    /// One element of a list.
    pub list: bool,
    pub file: PathBuf,
    pub line: usize,
}

/// Lists whose later value replaces the whole list (the other lists
/// collect their elements from every file).
const REPLACED_LISTS: &[&str] = &[
    "image.components",
    "container.entrypoint",
    "container.cmd",
    "container.ignore-dependencies",
    "container.keep-locales",
    "container.layers",
];
/// Lists whose elements are kept even when repeated.
const REPEATABLE_LISTS: &[&str] = &["customize.commands"];

/// The settings of the recipe made of `files` (in merge order, as
/// [`crate::Recipe::files`] lists them), in table order.
pub fn trace(files: &[PathBuf]) -> Result<Vec<Setting>, RecipeError> {
    let mut out: Vec<Setting> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| RecipeError::Io {
            path: file.clone(),
            source: e,
        })?;
        let doc = DeTable::parse(&text).map_err(|e| RecipeError::Invalid {
            path: file.clone(),
            message: e.message().to_string(),
            hint: None,
        })?;
        let mut leaves = Vec::new();
        flatten("", doc.get_ref(), &mut leaves);
        // In the file's order (the parser's tables are sorted by key).
        leaves.sort_by_key(|l| l.2);
        for (key, value, offset) in leaves {
            if key == "include[]" {
                continue;
            }
            let line = text[..offset.min(text.len())].matches('\n').count() + 1;
            let s = Setting {
                list: key.ends_with("[]"),
                key: key.clone(),
                value,
                file: file.clone(),
                line,
            };
            merge(&mut out, s);
        }
        // A replaced list set in this file drops what earlier files set.
        for list in REPLACED_LISTS {
            if out.iter().any(|s| s.key == *list && s.file == *file) {
                out.retain(|s| s.key != *list || s.file == *file);
            }
        }
    }
    let order = |k: &str| {
        let table = k.split('.').next().unwrap_or("");
        [
            "image",
            "packages",
            "source",
            "output",
            "customize",
            "container",
            "disk",
            "test",
        ]
        .iter()
        .position(|t| *t == table)
        .unwrap_or(usize::MAX)
    };
    // By table, then by where each key first appeared; stable, so list
    // elements keep their order.
    let mut first: Vec<&str> = Vec::new();
    for s in &out {
        if !first.contains(&s.key.as_str()) {
            first.push(&s.key);
        }
    }
    let rank: BTreeMap<String, (usize, usize)> = first
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), (order(k), i)))
        .collect();
    out.sort_by_key(|s| rank[&s.key]);
    Ok(out)
}

/// Adds one setting of a later file to what the earlier ones set.
fn merge(out: &mut Vec<Setting>, s: Setting) {
    let key = s.key.trim_end_matches("[]").to_string();
    let s = Setting { key, ..s };
    if !s.list {
        // A scalar: the later file wins, in the place the first one had.
        match out.iter_mut().find(|x| x.key == s.key) {
            Some(x) => *x = s,
            None => out.push(s),
        }
        return;
    }
    if s.key == "test" {
        // Tests are replaced by name.
        let name = test_name(&s.value);
        if let Some(x) = out
            .iter_mut()
            .find(|x| x.key == "test" && name.is_some() && test_name(&x.value) == name)
        {
            *x = s;
            return;
        }
        out.push(s);
        return;
    }
    let table_list = matches!(
        s.key.as_str(),
        "source" | "customize.file" | "customize.user" | "customize.group"
    );
    if table_list
        || REPEATABLE_LISTS.contains(&s.key.as_str())
        || REPLACED_LISTS.contains(&s.key.as_str())
    {
        out.push(s);
    } else if !out.iter().any(|x| x.key == s.key && x.value == s.value) {
        // Collected lists keep the first file that named an element.
        out.push(s);
    }
}

fn test_name(inline: &str) -> Option<String> {
    let t: toml::Table = toml::from_str(&format!("t = {inline}")).ok()?;
    t.get("t")?.get("name")?.as_str().map(str::to_string)
}

/// Every leaf of `table` as (dotted key, TOML value, byte offset); list
/// elements get the key `KEY[]`.
fn flatten(prefix: &str, table: &DeTable, out: &mut Vec<(String, String, usize)>) {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            toml_key(k.get_ref())
        } else {
            format!("{prefix}.{}", toml_key(k.get_ref()))
        };
        match v.get_ref() {
            // Free tables merge by key, like tables.
            DeValue::Table(t) => flatten(&key, t, out),
            DeValue::Array(a) => {
                for e in a.iter() {
                    out.push((format!("{key}[]"), render(e.get_ref()), e.span().start));
                }
            }
            other => out.push((key, render(other), v.span().start.max(k.span().start))),
        }
    }
}

/// A key as TOML writes it: bare where it can be, else quoted.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        k.to_string()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

/// A value as inline TOML.
fn render(v: &DeValue) -> String {
    match v {
        // On one line: JSON's escapes are TOML's.
        DeValue::String(s) => serde_json::to_string(s.as_ref()).unwrap_or_default(),
        DeValue::Integer(i) => i.as_str().to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(a) => format!(
            "[{}]",
            a.iter()
                .map(|e| render(e.get_ref()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DeValue::Table(t) => {
            if t.is_empty() {
                return "{}".into();
            }
            format!(
                "{{ {} }}",
                t.iter()
                    .map(|(k, v)| format!("{} = {}", toml_key(k.get_ref()), render(v.get_ref())))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

/// A key a recipe file names that no recipe table has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey {
    /// Dotted (`image.sute`).
    pub key: String,
    pub line: usize,
    pub column: usize,
    /// The known key it is most likely a typo of.
    pub suggestion: Option<String>,
}

/// Every unknown key of the recipe text, in file order (none when the text
/// is no valid TOML: the typed parser reports that).
pub fn unknown_keys(text: &str) -> Vec<UnknownKey> {
    let Ok(doc) = DeTable::parse(text) else {
        return Vec::new();
    };
    let known = recipe_keys();
    let mut out = Vec::new();
    check_table(text, "", doc.get_ref(), &known, &mut out);
    out.sort_by_key(|u| (u.line, u.column));
    out
}

fn check_table(
    text: &str,
    path: &str,
    table: &DeTable,
    known: &BTreeMap<&'static str, Vec<String>>,
    out: &mut Vec<UnknownKey>,
) {
    let Some(keys) = known.get(path) else {
        return;
    };
    // The nested tables of this one are keys too.
    let nested: Vec<String> = known
        .keys()
        .filter_map(|t| {
            let rest = if path.is_empty() {
                Some(*t)
            } else {
                t.strip_prefix(path).and_then(|r| r.strip_prefix('.'))
            }?;
            (!rest.is_empty() && !rest.contains('.')).then(|| rest.to_string())
        })
        .collect();
    for (k, v) in table.iter() {
        let name = k.get_ref().as_ref();
        let full = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        if !keys.iter().any(|x| x == name) && !nested.iter().any(|x| x == name) {
            let (line, column) = position(text, k);
            out.push(UnknownKey {
                key: full,
                line,
                column,
                suggestion: did_you_mean(
                    name,
                    keys.iter()
                        .map(String::as_str)
                        .chain(nested.iter().map(String::as_str)),
                )
                .map(str::to_string),
            });
            continue;
        }
        match v.get_ref() {
            DeValue::Table(t) => check_table(text, &full, t, known, out),
            DeValue::Array(a) => {
                for e in a.iter() {
                    if let DeValue::Table(t) = e.get_ref() {
                        check_table(text, &full, t, known, out);
                    }
                }
            }
            _ => {}
        }
    }
}

fn position<T>(text: &str, s: &Spanned<T>) -> (usize, usize) {
    let offset = s.span().start.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    (
        text[..offset].matches('\n').count() + 1,
        text[line_start..offset].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Recipe;
    use std::path::Path;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn values<'a>(s: &'a [Setting], key: &str) -> Vec<(&'a str, String)> {
        s.iter()
            .filter(|x| x.key == key)
            .map(|x| {
                (
                    x.value.as_str(),
                    x.file.file_name().unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn each_value_names_the_file_that_set_it_and_agrees_with_the_loaded_recipe() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "classes/base.toml",
            "[image]\nname = \"base\"\nsuite = \"bookworm\"\ncomponents = [\"main\", \"contrib\"]\n\
             [packages]\ninclude = [\"apt\", \"curl\"]\n\
             [container]\nentrypoint = [\"/bin/a\"]\nenv = { A = \"1\" }\n\
             [[test]]\nname = \"t\"\ncommand = \"true\"\n",
        );
        let p = write(
            d.path(),
            "img.toml",
            "include = [\"classes/base.toml\"]\n[image]\nname = \"img\"\n\
             components = [\"main\"]\n[packages]\ninclude = [\"apt\", \"jq\"]\n\
             [container]\nentrypoint = [\"/bin/b\"]\nenv = { B = \"2\" }\n\
             [[test]]\nname = \"t\"\ncommand = \"false\"\n",
        );
        let r = Recipe::load(&p).unwrap();
        let s = trace(&r.files).unwrap();
        assert_eq!(values(&s, "image.name"), [("\"img\"", "img.toml".into())]);
        assert_eq!(
            values(&s, "image.suite"),
            [("\"bookworm\"", "base.toml".into())]
        );
        assert_eq!(r.image.suite, "bookworm");
        // Collected: each element from the first file that named it.
        assert_eq!(
            values(&s, "packages.include"),
            [
                ("\"apt\"", "base.toml".into()),
                ("\"curl\"", "base.toml".into()),
                ("\"jq\"", "img.toml".into())
            ]
        );
        assert_eq!(r.packages.include, ["apt", "curl", "jq"]);
        // Replaced: only the later file's list.
        assert_eq!(
            values(&s, "image.components"),
            [("\"main\"", "img.toml".into())]
        );
        assert_eq!(r.image.components, ["main"]);
        assert_eq!(
            values(&s, "container.entrypoint"),
            [("\"/bin/b\"", "img.toml".into())]
        );
        // Free tables merge by key.
        assert_eq!(
            values(&s, "container.env.A"),
            [("\"1\"", "base.toml".into())]
        );
        assert_eq!(
            values(&s, "container.env.B"),
            [("\"2\"", "img.toml".into())]
        );
        assert_eq!(r.container.env.len(), 2);
        // Tests replace by name.
        let t = values(&s, "test");
        assert_eq!(t.len(), 1);
        assert!(t[0].0.contains("false") && t[0].1 == "img.toml", "{t:?}");
        assert_eq!(r.tests.len(), 1);
        // Lines are the value's own.
        let name = s.iter().find(|x| x.key == "image.name").unwrap();
        assert_eq!(name.line, 3);
    }

    #[test]
    fn every_unknown_key_is_reported_at_once_with_its_line_and_a_suggestion() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "r.toml",
            "[image]\nname = \"x\"\nsute = \"trixie\"\n[packages]\ninclde = [\"jq\"]\n\
             [[source]]\nuri = \"http://localhost/x\"\nsuites = [\"s\"]\nsigned = \"k\"\n\
             [container.env]\nANY_NAME = \"fine\"\n[bogus]\nx = 1\n",
        );
        let e = Recipe::load(&p).unwrap_err();
        let RecipeError::UnknownKeys { keys, .. } = &e else {
            panic!("{e}");
        };
        let got: Vec<(&str, usize, Option<&str>)> = keys
            .iter()
            .map(|k| (k.key.as_str(), k.line, k.suggestion.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("image.sute", 3, Some("suite")),
                ("packages.inclde", 5, Some("include")),
                ("source.signed", 9, Some("signed-by")),
                ("bogus", 12, None),
            ]
        );
        let msg = e.to_string();
        assert!(msg.contains("4 unknown keys"), "{msg}");
        assert!(
            msg.contains("5:1: `packages.inclde` (did you mean `include`?)"),
            "{msg}"
        );
        assert!(e.hint().unwrap().contains("docs/recipe.md"));
    }

    #[test]
    fn one_unknown_key_keeps_the_snippet_error() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "r.toml",
            "[image]\nname = \"x\"\nsute = \"trixie\"\n",
        );
        let e = Recipe::load(&p).unwrap_err();
        assert!(matches!(e, RecipeError::Syntax { line: 3, .. }), "{e}");
        assert_eq!(e.hint().as_deref(), Some("did you mean `suite`?"));
    }

    #[test]
    fn the_shipped_recipes_trace_without_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let r = Recipe::load(&p).unwrap();
                let s = trace(&r.files).unwrap();
                let name = s.iter().find(|x| x.key == "image.name").unwrap();
                assert_eq!(
                    name.value,
                    format!("\"{}\"", r.image.name),
                    "{}",
                    p.display()
                );
            }
        }
    }
}

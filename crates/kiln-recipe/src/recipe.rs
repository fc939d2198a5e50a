//! Recipes: TOML files composed from classes through `include`.
//!
//! Each file is parsed on its own with unknown keys rejected, so every error
//! points at the file, line and column that caused it. Files are then merged
//! in order (includes first, then the including file): later scalars win,
//! lists append (keeping the first occurrence of repeated values).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::RecipeError;

/// The Priority-based base set, as debootstrap variants define it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// No Priority-based set: only `include` and what it needs.
    None,
    Required,
    Important,
    Standard,
}

impl Priority {
    /// Whether a package of Debian priority `p` belongs to this set.
    pub fn includes(self, p: &str) -> bool {
        let rank = match p {
            "required" => 1,
            "important" => 2,
            "standard" => 3,
            _ => return false,
        };
        rank <= self as u8
    }
}

const ARCHITECTURES: &[&str] = &[
    "amd64", "arm64", "armel", "armhf", "i386", "loong64", "mips64el", "ppc64el", "riscv64",
    "s390x",
];
const FORMATS: &[&str] = &["tar", "oci", "disk", "qcow2", "vhd", "gce"];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Layer {
    include: Option<Vec<Spanned<String>>>,
    image: Option<ImageLayer>,
    packages: Option<PackagesLayer>,
    source: Option<Vec<SourceLayer>>,
    output: Option<OutputLayer>,
    customize: Option<CustomizeLayer>,
    container: Option<ContainerLayer>,
    disk: Option<DiskLayer>,
    test: Option<Vec<TestEntry>>,
    publish: Option<Vec<PublishTarget>>,
    update: Option<UpdateLayer>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct UpdateLayer {
    url: Option<Spanned<String>>,
    channel: Option<Spanned<String>>,
    tries: Option<u32>,
    wave: Option<Spanned<String>>,
}

/// `[update]`: an immutable image that updates itself with
/// systemd-sysupdate from a channel of a download tree.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Update {
    /// Base URL of the download tree (`kiln publish --to file://TREE`
    /// served over HTTP); the machine reads `URL/sysupdate/CHANNEL/`.
    pub url: String,
    /// The channel the image follows (default `stable`).
    pub channel: String,
    /// Boots a new version gets to reach `boot-complete.target` before
    /// systemd-boot goes back to the previous one (default 3).
    pub tries: u32,
    /// The wave `kiln watch --rebuild` releases a rebuilt version with
    /// (`P%/DURATION`; none: every machine at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
}

/// Whether `v` can be an image version: what systemd-sysupdate's `@v`
/// matches and a GPT label holds (letters, digits, `.~^+-`, starting with
/// a letter or digit, at most 24 characters). `_` is the separator of the
/// file names and labels, so it is not allowed.
pub fn valid_image_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 24
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".~^+-".contains(&c))
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DiskLayer {
    layout: Option<Spanned<String>>,
    filesystem: Option<Spanned<String>>,
    usr_filesystem: Option<Spanned<String>>,
    esp_size: Option<Spanned<String>>,
    root_size: Option<Spanned<String>>,
    headroom: Option<Spanned<String>>,
    cmdline: Option<Vec<String>>,
    ab_slots: Option<bool>,
}

/// `[disk]`: how `disk` and `qcow2` outputs are laid out.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Disk {
    /// `standard` (one writable root) or `immutable` (read-only /usr under dm-verity).
    pub layout: String,
    /// Root partition filesystem: `ext4` or `erofs` (read-only).
    pub filesystem: String,
    /// Immutable layout: the /usr partition's filesystem, `erofs` or `ext4`.
    pub usr_filesystem: String,
    /// EFI system partition size in bytes.
    pub esp_size: u64,
    /// Fixed root partition size in bytes (None: content plus headroom).
    pub root_size: Option<u64>,
    /// Free space added to the content when the root size is computed.
    pub headroom: Headroom,
    /// Extra kernel command-line arguments (after the ones Kiln generates).
    pub cmdline: Vec<String>,
    /// Immutable layout: reserve an empty second /usr slot for A/B updates.
    pub ab_slots: bool,
}

/// Free space on top of the content: a percentage or a fixed size.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Headroom {
    Percent(u32),
    Bytes(u64),
}

/// `[[test]]`: a command the boot test runs in the booted image.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TestEntry {
    /// Shown in reports.
    pub name: String,
    /// Run with /bin/sh -c as root after boot.
    pub command: String,
    /// Text the output must contain (default: only the exit status counts).
    pub expect: Option<String>,
    /// Also a health check of an updating image: a new version whose
    /// health check fails at boot is not blessed, and the machine goes
    /// back to the previous version ([update]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub health: bool,
}

/// `[[publish]]`: where `kiln publish OUT` sends a build of this recipe
/// when no `--to` is given. A class may carry its own (a provider class its
/// registry); entries of every file are kept, the same `to` once.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PublishTarget {
    /// `file:///PATH`, `docker://HOST/REPOSITORY[:TAG]` or `HOST/REPOSITORY[:TAG]`.
    pub to: String,
    /// The channel of a download tree (default `stable`).
    pub channel: Option<String>,
}

/// Parses `512M`, `2G`, `1048576`, `64K` (binary units) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContainerLayer {
    distroless: Option<bool>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    user: Option<String>,
    working_dir: Option<String>,
    exposed_ports: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    compression: Option<Spanned<String>>,
    keep_locales: Option<Vec<String>>,
    ignore_dependencies: Option<Vec<String>>,
    layers: Option<Spanned<String>>,
}

/// What a distroless image leaves out by default: tools that only
/// maintainer scripts use (no script runs in a distroless image).
pub const DISTROLESS_IGNORED: &[&str] = &[
    "dpkg",
    "debconf",
    "debconf-2.0",
    "cdebconf",
    "init-system-helpers",
    "ucf",
    "install-info",
];

/// `[container]`: how the OCI image runs, and distroless mode.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Container {
    pub distroless: bool,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `gzip` or `zstd`.
    pub compression: String,
    pub keep_locales: Vec<String>,
    /// Dependencies on these packages count as met (resolution input).
    pub ignore_dependencies: Vec<String>,
    /// `single`, or `per-package` (distroless: one layer per package).
    pub layers: String,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CustomizeLayer {
    hostname: Option<String>,
    timezone: Option<String>,
    locale: Option<String>,
    enable: Option<Vec<String>>,
    disable: Option<Vec<String>>,
    commands: Option<Vec<String>>,
    network: Option<bool>,
    overlays: Option<Vec<Spanned<String>>>,
    file: Option<Vec<FileLayer>>,
    user: Option<Vec<User>>,
    group: Option<Vec<Group>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileLayer {
    path: Spanned<String>,
    content: Option<String>,
    source: Option<String>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
}

/// `[[customize.user]]`: a user created with useradd.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    pub name: String,
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    #[serde(default)]
    pub system: bool,
}

/// `[[customize.group]]`: a group created with groupadd.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Group {
    pub name: String,
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
}

/// Where a file's contents come from.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FileContent {
    Inline(String),
    /// A file on the build host (resolved relative to the recipe that named it).
    Source(PathBuf),
}

/// `[[customize.file]]`: a file placed in the image.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct FileEntry {
    pub path: String,
    pub content: FileContent,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `[customize]`: changes applied after the packages are installed.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Customize {
    pub hostname: Option<String>,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub enable: Vec<String>,
    pub disable: Vec<String>,
    pub commands: Vec<String>,
    /// `commands` get the host's network (default: only loopback).
    pub network: bool,
    pub overlays: Vec<PathBuf>,
    pub files: Vec<FileEntry>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ImageLayer {
    name: Option<Spanned<String>>,
    version: Option<String>,
    suite: Option<Spanned<String>>,
    architectures: Option<Vec<Spanned<String>>>,
    components: Option<Vec<Spanned<String>>>,
    default_sources: Option<bool>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PackagesLayer {
    priority: Option<Priority>,
    include: Option<Vec<Spanned<String>>>,
    exclude: Option<Vec<Spanned<String>>>,
    recommends: Option<bool>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SourceLayer {
    uri: Spanned<String>,
    suites: Vec<Spanned<String>>,
    #[serde(default)]
    components: Option<Vec<Spanned<String>>>,
    signed_by: Option<Spanned<String>>,
    #[serde(default)]
    allow_unsigned: bool,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct OutputLayer {
    formats: Option<Vec<Spanned<String>>>,
    directory: Option<String>,
}

/// `[image]`: what is being built.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Image {
    pub name: String,
    pub version: Option<String>,
    pub suite: String,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    pub default_sources: bool,
}

/// `[packages]`: the requested package set.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Packages {
    pub priority: Priority,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub recommends: bool,
}

/// Where a key for a `[[source]]` comes from.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SignedBy {
    File(PathBuf),
    Inline(String),
}

/// `[[source]]`: an extra repository.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct SourceSpec {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<SignedBy>,
    pub allow_unsigned: bool,
    /// `file:line` where it was declared.
    #[serde(skip)]
    pub origin: String,
}

/// `[output]`: which artifacts to write.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Output {
    pub formats: Vec<String>,
    pub directory: Option<PathBuf>,
}

/// A composed, validated recipe.
#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    /// The recipe file named on the command line.
    #[serde(skip)]
    pub path: PathBuf,
    /// Every file that contributed, in merge order.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    pub image: Image,
    pub packages: Packages,
    pub sources: Vec<SourceSpec>,
    pub output: Output,
    pub customize: Customize,
    pub container: Container,
    pub disk: Disk,
    pub tests: Vec<TestEntry>,
    pub publish: Vec<PublishTarget>,
    pub update: Option<Update>,
}

impl Recipe {
    /// Loads `path` and everything it includes.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let mut files = Vec::new();
        let mut stack = Vec::new();
        let merged = load_layer(path, &mut stack, &mut files)?;
        finish(path, files, merged)
    }

    /// The lock file that belongs to this recipe.
    pub fn lock_path(&self) -> PathBuf {
        lock_path_for(&self.path)
    }

    /// sha256 over everything that influences resolution (not the outputs), so
    /// a lock stays valid when only output settings change.
    pub fn resolution_hash(&self) -> String {
        use sha2::Digest;
        #[derive(Serialize)]
        struct Inputs<'a> {
            suite: &'a str,
            architectures: &'a [String],
            components: &'a [String],
            default_sources: bool,
            packages: &'a Packages,
            sources: &'a [SourceSpec],
            distroless: bool,
            ignore: &'a [String],
        }
        let json = serde_json::to_vec(&Inputs {
            suite: &self.image.suite,
            architectures: &self.image.architectures,
            components: &self.image.components,
            default_sources: self.image.default_sources,
            packages: &self.packages,
            sources: &self.sources,
            distroless: self.container.distroless,
            ignore: &self.container.ignore_dependencies,
        })
        .expect("recipe serializes");
        hex::encode(sha2::Sha256::digest(json))
    }

    /// Each resolution input on its own, by the recipe key that sets it, as
    /// a sha256: the lock records them, so a lock that no longer matches can
    /// say which of them changed.
    pub fn resolution_inputs(&self) -> BTreeMap<String, String> {
        use sha2::Digest;
        fn h(v: &impl Serialize) -> String {
            hex::encode(sha2::Sha256::digest(
                serde_json::to_vec(v).expect("recipe serializes"),
            ))
        }
        let p = &self.packages;
        [
            ("suite", h(&self.image.suite)),
            ("architectures", h(&self.image.architectures)),
            ("components", h(&self.image.components)),
            ("default-sources", h(&self.image.default_sources)),
            ("priority", h(&p.priority)),
            ("include", h(&p.include)),
            ("exclude", h(&p.exclude)),
            ("recommends", h(&p.recommends)),
            ("sources", h(&self.sources)),
            ("distroless", h(&self.container.distroless)),
            (
                "ignore-dependencies",
                h(&self.container.ignore_dependencies),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The output directory: `[output] directory`, else `out/<name>` beside the recipe.
    pub fn output_dir(&self) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        match &self.output.directory {
            Some(d) => base.join(d),
            None => base.join("out").join(&self.image.name),
        }
    }
}

/// The lock beside a recipe: `NAME.lock` for `NAME.toml` (so `kiln.toml`
/// has `kiln.lock`), keeping several recipes in one directory apart.
pub fn lock_path_for(recipe: &Path) -> PathBuf {
    let stem = recipe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("kiln");
    recipe.with_file_name(format!("{stem}.lock"))
}

/// Byte offset to 1-based line and column, plus the line's text with a caret.
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_no = text[..offset].matches('\n').count() + 1;
    let col = text[line_start..offset].chars().count() + 1;
    let line_end = text[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let gutter = format!("{line_no} | ");
    let snippet = format!("{gutter}{line}\n{}^", " ".repeat(gutter.len() + col - 1));
    (line_no, col, snippet)
}

fn syntax(
    path: &Path,
    text: &str,
    offset: usize,
    message: String,
    suggestion: Option<String>,
) -> RecipeError {
    let (line, column, snippet) = locate(text, offset);
    RecipeError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message,
        snippet,
        suggestion,
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a hint.
fn suggestion_for(message: &str) -> Option<String> {
    let (kind, rest) = if let Some(r) = message.strip_prefix("unknown field `") {
        ("key", r)
    } else if let Some(r) = message.strip_prefix("unknown variant `") {
        ("value", r)
    } else {
        return None;
    };
    let word = &rest[..rest.find('`')?];
    let expected: Vec<&str> = rest
        .split("expected")
        .nth(1)?
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let _ = kind;
    match did_you_mean(word, expected.iter().copied()) {
        Some(c) => Some(format!("did you mean `{c}`?")),
        None => Some(format!(
            "expected one of: {}",
            expected
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn load_layer(
    path: &Path,
    stack: &mut Vec<PathBuf>,
    files: &mut Vec<PathBuf>,
) -> Result<Merged, RecipeError> {
    let canon = std::fs::canonicalize(path).map_err(|e| RecipeError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if stack.contains(&canon) {
        let chain: Vec<String> = stack
            .iter()
            .chain(std::iter::once(&canon))
            .map(|p| p.display().to_string())
            .collect();
        return Err(RecipeError::IncludeCycle(chain.join(" -> ")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| RecipeError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    // Every misspelt key at once (one is reported below, with its line).
    let unknown = crate::trace::unknown_keys(&text);
    if unknown.len() > 1 {
        return Err(RecipeError::UnknownKeys {
            path: path.to_path_buf(),
            keys: unknown,
        });
    }
    let layer: Layer = toml::from_str(&text).map_err(|e| {
        let msg = e.message().trim().to_string();
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let sugg = suggestion_for(&msg);
        let msg = msg
            .replace("unknown field", "unknown key")
            .replace("unknown variant", "unknown value")
            .split(", expected")
            .next()
            .unwrap_or_default()
            .to_string();
        syntax(path, &text, offset, msg, sugg)
    })?;
    stack.push(canon);
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut merged = Merged::default();
    for inc in layer.include.iter().flatten() {
        // Only recipe files, named relative to the including file: an
        // include cannot pull /etc/shadow in (and echo its lines in errors).
        let name = inc.get_ref();
        if Path::new(name).is_absolute() || !name.ends_with(".toml") {
            return Err(syntax(
                path,
                &text,
                inc.span().start,
                format!("include `{name}` is not a relative path to a .toml recipe file"),
                Some("include classes by a path relative to the including file, e.g. \"classes/cloud.toml\"".into()),
            ));
        }
        let p = dir.join(name);
        if !p.exists() {
            return Err(syntax(
                path,
                &text,
                inc.span().start,
                format!("included file {} does not exist", p.display()),
                Some("include paths are relative to the including file".into()),
            ));
        }
        let sub = load_layer(&p, stack, files)?;
        merged.merge(sub);
    }
    stack.pop();
    let own = Merged::from_layer(layer, path, &text)?;
    merged.merge(own);
    files.push(path.to_path_buf());
    Ok(merged)
}

/// A value with the place it was set, for errors found after merging.
#[derive(Clone, Debug)]
struct At<T> {
    value: T,
    path: PathBuf,
    line: usize,
    column: usize,
    snippet: String,
}

impl<T> At<T> {
    fn err(&self, message: String, suggestion: Option<String>) -> RecipeError {
        RecipeError::Syntax {
            path: self.path.clone(),
            line: self.line,
            column: self.column,
            message,
            snippet: self.snippet.clone(),
            suggestion,
        }
    }
}

#[derive(Default)]
struct Merged {
    name: Option<At<String>>,
    version: Option<String>,
    suite: Option<At<String>>,
    architectures: Vec<At<String>>,
    components: Option<Vec<At<String>>>,
    default_sources: Option<bool>,
    priority: Option<Priority>,
    include: Vec<At<String>>,
    exclude: Vec<At<String>>,
    recommends: Option<bool>,
    sources: Vec<SourceSpec>,
    formats: Vec<At<String>>,
    directory: Option<String>,
    customize: Customize,
    container: ContainerLayer,
    compression_at: Option<At<String>>,
    disk: DiskAt,
    tests: Vec<TestEntry>,
    publish: Vec<PublishTarget>,
    update: UpdateAt,
}

#[derive(Default)]
struct UpdateAt {
    url: Option<At<String>>,
    channel: Option<At<String>>,
    tries: Option<u32>,
    wave: Option<At<String>>,
    /// Where the table was first seen (for errors about the whole table).
    seen: Option<PathBuf>,
}

#[derive(Default)]
struct DiskAt {
    layout: Option<At<String>>,
    filesystem: Option<At<String>>,
    usr_filesystem: Option<At<String>>,
    esp_size: Option<At<String>>,
    root_size: Option<At<String>>,
    headroom: Option<At<String>>,
    cmdline: Vec<String>,
    ab_slots: Option<bool>,
}

fn append_plain<T: PartialEq>(into: &mut Vec<T>, from: Vec<T>) {
    for v in from {
        if !into.contains(&v) {
            into.push(v);
        }
    }
}

fn append(into: &mut Vec<At<String>>, from: Vec<At<String>>) {
    for v in from {
        if !into.iter().any(|x| x.value == v.value) {
            into.push(v);
        }
    }
}

impl Merged {
    fn from_layer(l: Layer, path: &Path, text: &str) -> Result<Merged, RecipeError> {
        let at = |s: Spanned<String>| {
            let (line, column, snippet) = locate(text, s.span().start);
            At {
                value: s.into_inner(),
                path: path.to_path_buf(),
                line,
                column,
                snippet,
            }
        };
        let ats = |v: Option<Vec<Spanned<String>>>| {
            v.unwrap_or_default()
                .into_iter()
                .map(at)
                .collect::<Vec<_>>()
        };
        let image = l.image.unwrap_or_default();
        let packages = l.packages.unwrap_or_default();
        let output = l.output.unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut sources = Vec::new();
        for s in l.source.unwrap_or_default() {
            let origin = {
                let (line, _, _) = locate(text, s.uri.span().start);
                format!("{}:{}", path.display(), line)
            };
            let signed_by = s.signed_by.map(|k| {
                let k = k.into_inner();
                if k.contains("BEGIN PGP PUBLIC KEY BLOCK") {
                    SignedBy::Inline(k)
                } else {
                    SignedBy::File(dir.join(k))
                }
            });
            if s.suites.is_empty() {
                return Err(at(s.uri).err(
                    "[[source]] has an empty `suites` list".into(),
                    Some("name at least one suite, e.g. suites = [\"trixie\"]".into()),
                ));
            }
            sources.push(SourceSpec {
                uri: s.uri.into_inner().trim_end_matches('/').to_string(),
                suites: s.suites.into_iter().map(|s| s.into_inner()).collect(),
                components: s
                    .components
                    .map(|c| c.into_iter().map(|c| c.into_inner()).collect())
                    .unwrap_or_else(|| vec!["main".to_string()]),
                signed_by,
                allow_unsigned: s.allow_unsigned,
                origin,
            });
        }
        let c = l.customize.unwrap_or_default();
        let mut files = Vec::new();
        for f in c.file.unwrap_or_default() {
            let path_at = at(f.path.clone());
            let path = f.path.into_inner();
            if !path.starts_with('/') {
                return Err(path_at.err(
                    format!("file path `{path}` must be absolute"),
                    Some(format!("write it as \"/{path}\"")),
                ));
            }
            let content = match (f.content, f.source) {
                (Some(c), None) => FileContent::Inline(c),
                (None, Some(src)) => FileContent::Source(dir.join(src)),
                _ => {
                    return Err(path_at.err(
                        format!(
                            "[[customize.file]] {path}: give exactly one of `content` or `source`"
                        ),
                        None,
                    ))
                }
            };
            let mode = match f.mode {
                None => 0o644,
                Some(m) => {
                    let m_at = at(m.clone());
                    u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|v| *v <= 0o7777)
                        .ok_or_else(|| {
                            m_at.err(
                                format!("bad file mode `{}`", m.get_ref()),
                                Some("write it in octal, e.g. mode = \"0755\"".into()),
                            )
                        })?
                }
            };
            files.push(FileEntry {
                path,
                content,
                mode,
                uid: f.uid,
                gid: f.gid,
            });
        }
        let customize = Customize {
            hostname: c.hostname,
            timezone: c.timezone,
            locale: c.locale,
            enable: c.enable.unwrap_or_default(),
            disable: c.disable.unwrap_or_default(),
            commands: c.commands.unwrap_or_default(),
            network: c.network.unwrap_or(false),
            overlays: c
                .overlays
                .unwrap_or_default()
                .into_iter()
                .map(|o| dir.join(o.into_inner()))
                .collect(),
            files,
            users: c.user.unwrap_or_default(),
            groups: c.group.unwrap_or_default(),
        };
        let container = l.container.unwrap_or_default();
        let compression_at = container.compression.clone().map(at);
        let d = l.disk.unwrap_or_default();
        let disk = DiskAt {
            layout: d.layout.map(at),
            filesystem: d.filesystem.map(at),
            usr_filesystem: d.usr_filesystem.map(at),
            esp_size: d.esp_size.map(at),
            root_size: d.root_size.map(at),
            headroom: d.headroom.map(at),
            cmdline: d.cmdline.unwrap_or_default(),
            ab_slots: d.ab_slots,
        };
        let update = match l.update {
            None => UpdateAt::default(),
            Some(u) => UpdateAt {
                url: u.url.map(at),
                channel: u.channel.map(at),
                tries: u.tries,
                wave: u.wave.map(at),
                seen: Some(path.to_path_buf()),
            },
        };
        Ok(Merged {
            disk,
            update,
            tests: l.test.unwrap_or_default(),
            publish: l.publish.unwrap_or_default(),
            container,
            compression_at,
            customize,
            name: image.name.map(at),
            version: image.version,
            suite: image.suite.map(at),
            architectures: ats(image.architectures),
            components: image.components.map(|c| c.into_iter().map(at).collect()),
            default_sources: image.default_sources,
            priority: packages.priority,
            include: ats(packages.include),
            exclude: ats(packages.exclude),
            recommends: packages.recommends,
            sources,
            formats: ats(output.formats),
            directory: output.directory,
        })
    }

    fn merge(&mut self, o: Merged) {
        macro_rules! later_wins {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f; } )* };
        }
        later_wins!(
            name,
            version,
            suite,
            components,
            default_sources,
            priority,
            recommends,
            directory
        );
        append(&mut self.architectures, o.architectures);
        append(&mut self.include, o.include);
        append(&mut self.exclude, o.exclude);
        append(&mut self.formats, o.formats);
        self.sources.extend(o.sources);
        {
            let (a, b) = (&mut self.disk, o.disk);
            macro_rules! later {
                ($($f:ident),*) => { $( if b.$f.is_some() { a.$f = b.$f; } )* };
            }
            later!(
                layout,
                filesystem,
                usr_filesystem,
                esp_size,
                root_size,
                headroom,
                ab_slots
            );
            append_plain(&mut a.cmdline, b.cmdline);
        }
        {
            let (a, b) = (&mut self.update, o.update);
            macro_rules! later {
                ($($f:ident),*) => { $( if b.$f.is_some() { a.$f = b.$f; } )* };
            }
            later!(url, channel, tries, wave, seen);
        }
        for t in o.tests {
            match self.tests.iter_mut().find(|x| x.name == t.name) {
                Some(x) => *x = t,
                None => self.tests.push(t),
            }
        }
        for p in o.publish {
            match self.publish.iter_mut().find(|x| x.to == p.to) {
                Some(x) => *x = p,
                None => self.publish.push(p),
            }
        }
        {
            let (a, b) = (&mut self.container, o.container);
            macro_rules! later {
                ($($f:ident),*) => { $( if b.$f.is_some() { a.$f = b.$f; } )* };
            }
            later!(
                distroless,
                entrypoint,
                cmd,
                user,
                working_dir,
                compression,
                keep_locales,
                ignore_dependencies,
                layers
            );
            if let Some(env) = b.env {
                a.env.get_or_insert_with(BTreeMap::new).extend(env);
            }
            if let Some(l) = b.labels {
                a.labels.get_or_insert_with(BTreeMap::new).extend(l);
            }
            if let Some(p) = b.exposed_ports {
                let v = a.exposed_ports.get_or_insert_with(Vec::new);
                append_plain(v, p);
            }
            if o.compression_at.is_some() {
                self.compression_at = o.compression_at;
            }
        }
        let (a, b) = (&mut self.customize, o.customize);
        if b.hostname.is_some() {
            a.hostname = b.hostname;
        }
        if b.timezone.is_some() {
            a.timezone = b.timezone;
        }
        if b.locale.is_some() {
            a.locale = b.locale;
        }
        append_plain(&mut a.enable, b.enable);
        append_plain(&mut a.disable, b.disable);
        a.commands.extend(b.commands);
        // Any class whose commands need the network says so.
        a.network |= b.network;
        append_plain(&mut a.overlays, b.overlays);
        a.files.extend(b.files);
        a.users.extend(b.users);
        a.groups.extend(b.groups);
    }
}

/// The architecture Kiln runs on, in Debian's naming.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn valid_package_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 2
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(c))
}

fn finish(path: &Path, files: Vec<PathBuf>, m: Merged) -> Result<Recipe, RecipeError> {
    let missing = |key: &str, example: &str| RecipeError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "missing required key `{key}` (in none of: {})",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        hint: Some(format!("add it to the recipe, e.g. {example}")),
    };
    let name = m
        .name
        .ok_or_else(|| missing("image.name", "[image] name = \"my-image\""))?;
    if name.value.is_empty()
        || !name
            .value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
    {
        return Err(name.err(
            format!("invalid image name `{}`", name.value),
            Some("use letters, digits, '.', '_' and '-'".into()),
        ));
    }
    let suite = m
        .suite
        .ok_or_else(|| missing("image.suite", "[image] suite = \"trixie\""))?;
    if suite.value.is_empty()
        || suite.value.contains(char::is_whitespace)
        || suite.value.contains('/')
    {
        return Err(suite.err(format!("invalid suite `{}`", suite.value), None));
    }
    for a in &m.architectures {
        if !ARCHITECTURES.contains(&a.value.as_str()) {
            return Err(a.err(
                format!("unknown architecture `{}`", a.value),
                Some(
                    match did_you_mean(&a.value, ARCHITECTURES.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("Debian architectures are: {}", ARCHITECTURES.join(", ")),
                    },
                ),
            ));
        }
    }
    for p in m.include.iter().chain(&m.exclude) {
        if !valid_package_name(&p.value) {
            return Err(p.err(
                format!("`{}` is not a valid Debian package name", p.value),
                Some("package names use lowercase letters, digits, '+', '-' and '.'".into()),
            ));
        }
    }
    for f in &m.formats {
        if !FORMATS.contains(&f.value.as_str()) {
            return Err(f.err(
                format!("unknown output format `{}`", f.value),
                Some(match did_you_mean(&f.value, FORMATS.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("formats are: {}", FORMATS.join(", ")),
                }),
            ));
        }
    }
    if let Some(x) = m
        .exclude
        .iter()
        .find(|x| m.include.iter().any(|i| i.value == x.value))
    {
        return Err(x.err(
            format!("`{}` is both included and excluded", x.value),
            Some("remove it from one of the two lists".into()),
        ));
    }
    let distroless = m.container.distroless.unwrap_or(false);
    let compression = match &m.compression_at {
        None => "gzip".to_string(),
        Some(c) if c.value == "gzip" || c.value == "zstd" => c.value.clone(),
        Some(c) => {
            return Err(c.err(
                format!("unknown layer compression `{}`", c.value),
                Some("use \"gzip\" or \"zstd\"".into()),
            ))
        }
    };
    if distroless
        && (!m.customize.commands.is_empty()
            || !m.customize.enable.is_empty()
            || !m.customize.disable.is_empty()
            || m.customize.locale.is_some())
    {
        return Err(RecipeError::Invalid {
            path: path.to_path_buf(),
            message: "a distroless image runs no commands: [customize] commands, enable, disable and locale need a shell".into(),
            hint: Some("use [[customize.file]] and overlays, or build a full image (distroless = false)".into()),
        });
    }
    let layers = match &m.container.layers {
        None => "single".to_string(),
        Some(l) => {
            let v = l.get_ref().clone();
            if v != "single" && v != "per-package" {
                return Err(RecipeError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("unknown [container] layers `{v}`"),
                    hint: Some("use \"single\" or \"per-package\"".into()),
                });
            }
            if v == "per-package" && !distroless {
                return Err(RecipeError::Invalid {
                    path: path.to_path_buf(),
                    message: "per-package layers need a distroless image (maintainer scripts change files across packages)".into(),
                    hint: Some("set distroless = true, or layers = \"single\"".into()),
                });
            }
            v
        }
    };
    let disk = finish_disk(&m.disk)?;
    let mut seen = std::collections::HashSet::new();
    for t in &m.tests {
        if t.name.trim().is_empty() || t.command.trim().is_empty() {
            return Err(RecipeError::Invalid {
                path: path.to_path_buf(),
                message: "a [[test]] needs a non-empty `name` and `command`".into(),
                hint: Some("e.g. [[test]] name = \"ssh\" command = \"systemctl is-active ssh\" expect = \"active\"".into()),
            });
        }
        seen.insert(t.name.clone());
    }
    for p in &m.publish {
        if p.to.trim().is_empty() {
            return Err(RecipeError::Invalid {
                path: path.to_path_buf(),
                message: "a [[publish]] needs a non-empty `to`".into(),
                hint: Some(
                    "e.g. [[publish]] to = \"file:///srv/images\" channel = \"stable\"".into(),
                ),
            });
        }
    }
    let update = finish_update(&m.update, &disk, m.version.as_deref())?;
    let default_sources = m.default_sources.unwrap_or(true);
    if !default_sources && m.sources.is_empty() {
        return Err(RecipeError::Invalid {
            path: path.to_path_buf(),
            message: "`image.default-sources = false` but no [[source]] is given".into(),
            hint: Some("add a [[source]] table or drop default-sources".into()),
        });
    }
    let vals = |v: Vec<At<String>>| v.into_iter().map(|a| a.value).collect::<Vec<_>>();
    let mut architectures = vals(m.architectures);
    if architectures.is_empty() {
        architectures.push(host_architecture().to_string());
    }
    let mut formats = vals(m.formats);
    if formats.is_empty() {
        formats.push("tar".into());
    }
    Ok(Recipe {
        path: path.to_path_buf(),
        files,
        image: Image {
            name: name.value,
            version: m.version,
            suite: suite.value,
            architectures,
            components: m
                .components
                .map(vals)
                .unwrap_or_else(|| vec!["main".to_string()]),
            default_sources,
        },
        packages: Packages {
            // A distroless image has no base set unless one is asked for.
            priority: m.priority.unwrap_or(if distroless {
                Priority::None
            } else {
                Priority::Required
            }),
            include: vals(m.include),
            exclude: vals(m.exclude),
            recommends: m.recommends.unwrap_or(false),
        },
        sources: m.sources,
        output: Output {
            formats,
            directory: m.directory.map(PathBuf::from),
        },
        customize: m.customize,
        disk,
        tests: m.tests,
        publish: m.publish,
        update,
        container: Container {
            distroless,
            entrypoint: m.container.entrypoint,
            cmd: m.container.cmd,
            env: m.container.env.unwrap_or_default(),
            user: m.container.user,
            working_dir: m.container.working_dir,
            exposed_ports: m.container.exposed_ports.unwrap_or_default(),
            labels: m.container.labels.unwrap_or_default(),
            compression,
            keep_locales: m.container.keep_locales.unwrap_or_default(),
            layers,
            ignore_dependencies: m.container.ignore_dependencies.unwrap_or_else(|| {
                if distroless {
                    DISTROLESS_IGNORED.iter().map(|s| s.to_string()).collect()
                } else {
                    Vec::new()
                }
            }),
        },
    })
}

fn one_of(
    v: &Option<At<String>>,
    default: &str,
    allowed: &[&str],
    what: &str,
) -> Result<String, RecipeError> {
    match v {
        None => Ok(default.to_string()),
        Some(a) if allowed.contains(&a.value.as_str()) => Ok(a.value.clone()),
        Some(a) => Err(a.err(
            format!("unknown {what} `{}`", a.value),
            Some(match did_you_mean(&a.value, allowed.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("use one of: {}", allowed.join(", ")),
            }),
        )),
    }
}

fn size_of(v: &At<String>, what: &str) -> Result<u64, RecipeError> {
    parse_size(&v.value).filter(|n| *n > 0).ok_or_else(|| {
        v.err(
            format!("bad {what} `{}`", v.value),
            Some("write a size such as \"512M\" or \"2G\"".into()),
        )
    })
}

fn finish_update(
    u: &UpdateAt,
    disk: &Disk,
    version: Option<&str>,
) -> Result<Option<Update>, RecipeError> {
    let Some(seen) = &u.seen else {
        return Ok(None);
    };
    let invalid = |message: String, hint: &str| RecipeError::Invalid {
        path: seen.clone(),
        message,
        hint: Some(hint.into()),
    };
    let Some(url) = &u.url else {
        return Err(invalid(
            "[update] needs `url`, where the machine finds its channel".into(),
            "e.g. [update] url = \"https://images.example.org/\" (a tree written by kiln publish --to file://…, served over HTTP)",
        ));
    };
    let v = url.value.trim_end_matches('/');
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
        return Err(url.err(
            format!(
                "[update] url `{}` is not an http:// or https:// URL",
                url.value
            ),
            Some(
                "systemd-sysupdate downloads over HTTP(S); the signature makes plain HTTP safe"
                    .into(),
            ),
        ));
    }
    let channel = match &u.channel {
        None => "stable".to_string(),
        Some(c) => {
            if c.value.is_empty()
                || !c
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                || c.value.starts_with('.')
            {
                return Err(c.err(
                    format!("invalid [update] channel `{}`", c.value),
                    Some("use letters, digits, '.', '_' and '-', e.g. \"stable\"".into()),
                ));
            }
            c.value.clone()
        }
    };
    let tries = u.tries.unwrap_or(3);
    if !(1..=9).contains(&tries) {
        return Err(invalid(
            format!("[update] tries = {tries} is out of range"),
            "give 1 to 9 boots (systemd-boot's boot counting; 3 is usual)",
        ));
    }
    if disk.layout != "immutable" || !disk.ab_slots {
        return Err(invalid(
            "[update] needs the immutable disk layout with its second /usr slot".into(),
            "include classes/immutable.toml (or set [disk] layout = \"immutable\" and keep ab-slots = true)",
        ));
    }
    if let Some(v) = version {
        if !valid_image_version(v) {
            return Err(invalid(
                format!("[image] version `{v}` cannot be an update version"),
                "use letters, digits and '.~^+-' (no '_'), at most 24 characters, e.g. \"13.2\" or \"20261207.1\"",
            ));
        }
    }
    let wave = match &u.wave {
        None => None,
        Some(w) => {
            kiln_model::rollout::parse_wave(&w.value).map_err(|e| {
                w.err(
                    format!("invalid [update] wave: {e}"),
                    Some(
                        "e.g. wave = \"10%/24h\" (10% of machines at once, every machine in a day)"
                            .into(),
                    ),
                )
            })?;
            Some(w.value.clone())
        }
    };
    Ok(Some(Update {
        url: format!("{v}/"),
        channel,
        tries,
        wave,
    }))
}

fn finish_disk(d: &DiskAt) -> Result<Disk, RecipeError> {
    let layout = one_of(
        &d.layout,
        "standard",
        &["standard", "immutable"],
        "[disk] layout",
    )?;
    let filesystem = one_of(
        &d.filesystem,
        "ext4",
        &["ext4", "erofs"],
        "[disk] filesystem",
    )?;
    let usr_filesystem = one_of(
        &d.usr_filesystem,
        "erofs",
        &["erofs", "ext4"],
        "[disk] usr-filesystem",
    )?;
    if layout == "immutable" && filesystem == "erofs" {
        let a = d.filesystem.as_ref().unwrap();
        return Err(a.err(
            "the immutable layout keeps /etc and /var on a writable root: its root filesystem must be ext4".into(),
            Some("drop `filesystem` (the read-only /usr uses `usr-filesystem`)".into()),
        ));
    }
    let esp_size = match &d.esp_size {
        None => 128 << 20,
        Some(a) => {
            let n = size_of(a, "[disk] esp-size")?;
            if n < 64 << 20 {
                return Err(a.err(
                    format!("esp-size `{}` is too small for FAT32", a.value),
                    Some("use at least \"64M\"; the default is \"128M\"".into()),
                ));
            }
            n
        }
    };
    let root_size = match &d.root_size {
        Some(a) if a.value != "auto" => Some(size_of(a, "[disk] root-size")?),
        _ => None,
    };
    let headroom = match &d.headroom {
        None => Headroom::Percent(25),
        Some(a) => match a.value.strip_suffix('%') {
            Some(p) => Headroom::Percent(p.trim().parse().map_err(|_| {
                a.err(
                    format!("bad [disk] headroom `{}`", a.value),
                    Some("write a percentage such as \"25%\" or a size such as \"512M\"".into()),
                )
            })?),
            None => Headroom::Bytes(size_of(a, "[disk] headroom")?),
        },
    };
    Ok(Disk {
        layout,
        filesystem,
        usr_filesystem,
        esp_size,
        root_size,
        headroom,
        cmdline: d.cmdline.clone(),
        ab_slots: d.ab_slots.unwrap_or(true),
    })
}

/// The keys the parser accepts in one table, as serde knows them (from the
/// "expected one of" list of an unknown-field error), so that the list can
/// never fall behind the parser.
fn accepted_keys<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let err = match toml::from_str::<T>("kiln-no-such-key = 0") {
        Ok(_) => return Vec::new(),
        Err(e) => e.to_string(),
    };
    let Some(list) = err.split("expected ").nth(1) else {
        return Vec::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Every key of every recipe table (the root table is ""), straight from
/// the parser's own definitions; `docs/recipe.md` must document each one.
pub fn recipe_keys() -> BTreeMap<&'static str, Vec<String>> {
    let tables = |keys: Vec<String>, nested: &[&str]| -> Vec<String> {
        keys.into_iter()
            .filter(|k| !nested.contains(&k.as_str()))
            .collect()
    };
    BTreeMap::from([
        (
            "",
            tables(
                accepted_keys::<Layer>(),
                &[
                    "image",
                    "packages",
                    "source",
                    "output",
                    "customize",
                    "container",
                    "disk",
                    "test",
                    "publish",
                    "update",
                ],
            ),
        ),
        ("image", accepted_keys::<ImageLayer>()),
        ("packages", accepted_keys::<PackagesLayer>()),
        ("source", accepted_keys::<SourceLayer>()),
        ("output", accepted_keys::<OutputLayer>()),
        (
            "customize",
            tables(
                accepted_keys::<CustomizeLayer>(),
                &["file", "user", "group"],
            ),
        ),
        ("customize.file", accepted_keys::<FileLayer>()),
        ("customize.user", accepted_keys::<User>()),
        ("customize.group", accepted_keys::<Group>()),
        ("container", accepted_keys::<ContainerLayer>()),
        ("disk", accepted_keys::<DiskLayer>()),
        ("test", accepted_keys::<TestEntry>()),
        ("publish", accepted_keys::<PublishTarget>()),
        ("update", accepted_keys::<UpdateLayer>()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_are_filled_in() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "r.toml",
            "[image]\nname = \"x\"\nsuite = \"trixie\"\n",
        );
        let r = Recipe::load(&p).unwrap();
        assert_eq!(r.image.architectures, vec![host_architecture().to_string()]);
        assert_eq!(r.image.components, vec!["main"]);
        assert!(r.image.default_sources);
        assert_eq!(r.packages.priority, Priority::Required);
        assert!(!r.packages.recommends);
        assert_eq!(r.output.formats, vec!["tar"]);
        assert_eq!(r.output_dir(), d.path().join("out/x"));
        assert_eq!(r.lock_path(), d.path().join("r.lock"));
    }

    #[test]
    fn later_scalars_win_and_lists_append() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "classes/base.toml",
            "[image]\nname = \"base\"\nsuite = \"bookworm\"\narchitectures = [\"amd64\"]\n\
             [packages]\ninclude = [\"apt\", \"curl\"]\nrecommends = true\n",
        );
        write(
            d.path(),
            "classes/cloud.toml",
            "include = [\"base.toml\"]\n[packages]\ninclude = [\"cloud-init\", \"apt\"]\n",
        );
        let p = write(
            d.path(),
            "img.toml",
            "include = [\"classes/cloud.toml\"]\n[image]\nname = \"img\"\nsuite = \"trixie\"\n\
             architectures = [\"arm64\"]\n[packages]\nrecommends = false\n",
        );
        let r = Recipe::load(&p).unwrap();
        assert_eq!(r.image.name, "img");
        assert_eq!(r.image.suite, "trixie");
        assert_eq!(r.image.architectures, vec!["amd64", "arm64"]);
        assert_eq!(r.packages.include, vec!["apt", "curl", "cloud-init"]);
        assert!(!r.packages.recommends);
        assert_eq!(r.files.len(), 3);
    }

    #[test]
    fn missing_name_lists_the_files() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "r.toml", "[image]\nsuite = \"trixie\"\n");
        let e = Recipe::load(&p).unwrap_err();
        assert!(
            e.to_string().contains("missing required key `image.name`"),
            "{e}"
        );
        assert!(e.hint().unwrap().contains("[image] name = "));
    }

    #[test]
    fn bad_values_point_at_their_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "r.toml",
            "[image]\nname = \"x\"\nsuite = \"trixie\"\n[packages]\ninclude = [\"Bad_Name\"]\n",
        );
        let e = Recipe::load(&p).unwrap_err();
        assert!(e.to_string().contains("r.toml:5:12"), "{e}");
        let p = write(
            d.path(),
            "r.toml",
            "[image]\nname = \"x\"\nsuite = \"trixie\"\n[output]\nformats = [\"qcow\"]\n",
        );
        let e = Recipe::load(&p).unwrap_err();
        assert_eq!(e.hint().as_deref(), Some("did you mean `qcow2`?"));
    }

    #[test]
    fn resolution_hash_ignores_outputs() {
        let d = tempfile::tempdir().unwrap();
        let a = write(
            d.path(),
            "a.toml",
            "[image]\nname = \"x\"\nsuite = \"trixie\"\n",
        );
        let b = write(
            d.path(),
            "b.toml",
            "[image]\nname = \"y\"\nsuite = \"trixie\"\n[output]\nformats = [\"oci\"]\n",
        );
        let c = write(
            d.path(),
            "c.toml",
            "[image]\nname = \"x\"\nsuite = \"trixie\"\n[packages]\ninclude = [\"curl\"]\n",
        );
        let h = |p: &Path| Recipe::load(p).unwrap().resolution_hash();
        assert_eq!(h(&a), h(&b));
        assert_ne!(h(&a), h(&c));
    }

    #[test]
    fn disk_section_defaults_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let base = "[image]\nname = \"x\"\nsuite = \"trixie\"\n";
        let p = write(d.path(), "a.toml", base);
        let r = Recipe::load(&p).unwrap();
        assert_eq!(r.disk.layout, "standard");
        assert_eq!(r.disk.esp_size, 128 << 20);
        assert_eq!(r.disk.headroom, Headroom::Percent(25));
        let p = write(
            d.path(),
            "b.toml",
            &format!("{base}[disk]\nlayout = \"immutable\"\nroot-size = \"2G\"\nheadroom = \"300M\"\ncmdline = [\"quiet\"]\n[[test]]\nname = \"t\"\ncommand = \"true\"\n"),
        );
        let r = Recipe::load(&p).unwrap();
        assert_eq!(r.disk.root_size, Some(2 << 30));
        assert_eq!(r.disk.headroom, Headroom::Bytes(300 << 20));
        assert_eq!(r.tests.len(), 1);
        let p = write(
            d.path(),
            "c.toml",
            &format!("{base}[disk]\nlayout = \"imutable\"\n"),
        );
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml:5") && e.contains("imutable"), "{e}");
        let p = write(
            d.path(),
            "e.toml",
            &format!("{base}[disk]\nroot-size = \"lots\"\n"),
        );
        let e = Recipe::load(&p).unwrap_err();
        assert!(e.to_string().contains("bad [disk] root-size"), "{e}");
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn update_section_defaults_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let base = "[image]\nname = \"x\"\nsuite = \"trixie\"\nversion = \"2\"\n[disk]\nlayout = \"immutable\"\n";
        let p = write(
            d.path(),
            "a.toml",
            &format!("{base}[update]\nurl = \"http://10.0.2.2:8470\"\n[[test]]\nname = \"h\"\ncommand = \"true\"\nhealth = true\n"),
        );
        let r = Recipe::load(&p).unwrap();
        let u = r.update.unwrap();
        assert_eq!(u.url, "http://10.0.2.2:8470/");
        assert_eq!((u.channel.as_str(), u.tries, u.wave), ("stable", 3, None));
        assert!(r.tests[0].health);
        let p = write(
            d.path(),
            "wave.toml",
            &format!("{base}[update]\nurl = \"http://x/\"\nwave = \"10%/24h\"\n"),
        );
        assert_eq!(
            Recipe::load(&p).unwrap().update.unwrap().wave.as_deref(),
            Some("10%/24h")
        );
        for (name, text, want) in [
            (
                "b.toml",
                format!("{base}[update]\nchannel = \"beta\"\n"),
                "needs `url`",
            ),
            (
                "c.toml",
                format!("{base}[update]\nurl = \"ftp://x/\"\n"),
                "not an http",
            ),
            (
                "d.toml",
                format!("{base}[update]\nurl = \"http://x/\"\ntries = 0\n"),
                "tries = 0",
            ),
            (
                "e.toml",
                format!("{base}[update]\nurl = \"http://x/\"\nchannel = \"../x\"\n"),
                "invalid [update] channel",
            ),
            (
                "w.toml",
                format!("{base}[update]\nurl = \"http://x/\"\nwave = \"150%/1h\"\n"),
                "more than 100%",
            ),
            (
                "f.toml",
                "[image]\nname = \"x\"\nsuite = \"trixie\"\n[update]\nurl = \"http://x/\"\n"
                    .to_string(),
                "immutable disk layout",
            ),
            (
                "g.toml",
                format!(
                    "{}[update]\nurl = \"http://x/\"\n",
                    base.replace("\"2\"", "\"2_1\"")
                ),
                "cannot be an update version",
            ),
            (
                "h.toml",
                format!("{base}[update]\nurl = \"http://x/\"\nkeep = 2\n"),
                "keep",
            ),
        ] {
            let p = write(d.path(), name, &text);
            let e = Recipe::load(&p).unwrap_err();
            let full = format!("{e} {}", e.hint().unwrap_or_default());
            assert!(full.contains(want), "{name}: {full}");
        }
        assert!(valid_image_version("20261207.1"));
        assert!(
            !valid_image_version("-1") && !valid_image_version("1_2") && !valid_image_version("")
        );
        assert!(!valid_image_version(&"1".repeat(25)));
    }

    #[test]
    fn every_key_is_documented() {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/recipe.md"),
        )
        .unwrap();
        let keys = recipe_keys();
        assert!(keys["container"].contains(&"keep-locales".to_string()));
        assert!(keys[""].contains(&"include".to_string()));
        for (table, keys) in keys {
            if !table.is_empty() {
                let heading = if table == "source"
                    || table == "test"
                    || table == "publish"
                    || table.contains('.')
                {
                    format!("## `[[{table}]]`")
                } else {
                    format!("## `[{table}]`")
                };
                assert!(doc.contains(&heading), "docs/recipe.md lacks {heading}");
            }
            for k in keys {
                assert!(
                    doc.contains(&format!("| `{k}` |")),
                    "docs/recipe.md does not document `{k}` of [{table}]"
                );
            }
        }
    }

    #[test]
    fn include_takes_only_relative_toml_files() {
        let d = tempfile::tempdir().unwrap();
        let secret = write(d.path(), "secret", "root:$6$hash:19000:0:99999:7:::\n");
        for inc in [secret.display().to_string(), "secret".to_string()] {
            let p = write(
                d.path(),
                "a.toml",
                &format!("include = [\"{inc}\"]\n[image]\nname = \"x\"\nsuite = \"trixie\"\n"),
            );
            let e = Recipe::load(&p).unwrap_err().to_string();
            assert!(
                e.contains("not a relative path to a .toml recipe file"),
                "{e}"
            );
            assert!(
                !e.contains("$6$hash"),
                "the included file's text leaked: {e}"
            );
        }
    }
}

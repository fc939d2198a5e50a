//! Reading an OCI image layout into a push plan, verifying every blob on the
//! way.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::RegistryError;

pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST_V2: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Registries commonly refuse larger manifests.
const MAX_MANIFEST: u64 = 4 << 20;
/// Indexes nested deeper than this are refused.
const MAX_DEPTH: usize = 4;

/// A blob (config or layer) to upload.
#[derive(Debug)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub path: PathBuf,
}

/// A manifest or index, with its exact bytes.
#[derive(Debug)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// What to send, in order: blobs, then child manifests, then the top-level
/// manifest or index.
#[derive(Debug)]
pub struct Plan {
    pub blobs: Vec<Blob>,
    pub children: Vec<Manifest>,
    pub top: Manifest,
}

struct Reader<'a> {
    dir: &'a Path,
    blobs: Vec<Blob>,
    children: Vec<Manifest>,
    seen: HashSet<String>,
}

/// Reads the layout at `dir` and verifies every blob the pushed image needs
/// (sha256 and size against its descriptor).
///
/// `tag` picks one image when `index.json` lists several different ones under
/// different `org.opencontainers.image.ref.name` annotations.
pub fn read_plan(dir: &Path, tag: &str) -> Result<Plan, RegistryError> {
    let layout_err = |message: String| RegistryError::Layout {
        path: dir.to_path_buf(),
        message,
    };
    let marker = dir.join("oci-layout");
    let text = std::fs::read(&marker)
        .map_err(|e| layout_err(format!("cannot read {}: {e}", marker.display())))?;
    let marker: Value = serde_json::from_slice(&text)
        .map_err(|e| layout_err(format!("oci-layout is not JSON: {e}")))?;
    match marker.get("imageLayoutVersion").and_then(Value::as_str) {
        Some(v) if v.starts_with("1.") => {}
        other => {
            return Err(layout_err(format!(
                "unsupported imageLayoutVersion {other:?} in oci-layout (expected 1.x)"
            )))
        }
    }
    let index_path = dir.join("index.json");
    let text = std::fs::read(&index_path)
        .map_err(|e| layout_err(format!("cannot read {}: {e}", index_path.display())))?;
    let index: Value = serde_json::from_slice(&text)
        .map_err(|e| layout_err(format!("index.json is not JSON: {e}")))?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| layout_err("index.json lists no manifests".into()))?;
    let mut descs = Vec::new();
    for e in entries {
        descs.push(Descriptor::from_json(e).map_err(|m| layout_err(format!("index.json: {m}")))?);
    }

    let mut reader = Reader {
        dir,
        blobs: Vec::new(),
        children: Vec::new(),
        seen: HashSet::new(),
    };
    let all = distinct(&descs);
    let tagged = distinct(descs.iter().filter(|d| d.ref_name() == Some(tag)));
    let covering = covering_index(dir, &all);
    let top = if all.len() == 1 {
        reader.load(all[0], 0)?
    } else if tagged.len() == 1 {
        reader.load(tagged[0], 0)?
    } else if let Some(index) = covering {
        // A multi-architecture layout that also names each platform's
        // manifest (as Kiln's do, for umoci): the index is the image.
        reader.load(index, 0)?
    } else if all
        .iter()
        .all(|d| is_manifest(&d.media_type) && d.json.get("platform").is_some())
    {
        // Several single-platform manifests listed directly in index.json:
        // push them by digest and an image index of them under the tag.
        let mut list = Vec::new();
        for d in &all {
            let child = reader.load(d, 0)?;
            reader.children.push(child);
            list.push(without_ref_name(&d.json));
        }
        let mut top = json!({ "schemaVersion": 2, "mediaType": INDEX_V1, "manifests": list });
        if let Some(a) = index
            .get("annotations")
            .filter(|a| a.as_object().is_some_and(|o| !o.is_empty()))
        {
            top["annotations"] = a.clone();
        }
        let bytes = serde_json::to_vec(&top).expect("serialising JSON cannot fail");
        Manifest {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            media_type: INDEX_V1.into(),
            bytes,
        }
    } else {
        let names: Vec<&str> = descs.iter().filter_map(Descriptor::ref_name).collect();
        return Err(layout_err(format!(
            "index.json lists {} different images and none is tagged '{tag}' (ref names: {}); \
             push one of those tags",
            all.len(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    Ok(Plan {
        blobs: reader.blobs,
        children: reader.children,
        top,
    })
}

#[derive(Clone, Debug)]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    json: Value,
}

impl Descriptor {
    fn from_json(v: &Value) -> Result<Descriptor, String> {
        let digest = v
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("a descriptor has no digest")?;
        let size = v
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("descriptor {digest} has no size"))?;
        let media_type = v
            .get("mediaType")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("descriptor {digest} has no mediaType"))?;
        Ok(Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size,
            json: v.clone(),
        })
    }

    fn ref_name(&self) -> Option<&str> {
        self.json.get("annotations")?.get(REF_NAME)?.as_str()
    }
}

/// The one image index among `all` that lists every other descriptor of
/// `all`, when there is one.
fn covering_index<'a>(dir: &Path, all: &[&'a Descriptor]) -> Option<&'a Descriptor> {
    let indexes: Vec<&&Descriptor> = all.iter().filter(|d| d.media_type == INDEX_V1).collect();
    let [index] = indexes.as_slice() else {
        return None;
    };
    let hex = index.digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let listed: HashSet<&str> = v
        .get("manifests")?
        .as_array()?
        .iter()
        .filter_map(|m| m.get("digest").and_then(Value::as_str))
        .collect();
    all.iter()
        .all(|d| d.digest == index.digest || listed.contains(d.digest.as_str()))
        .then_some(**index)
}

fn distinct<'a>(descs: impl IntoIterator<Item = &'a Descriptor>) -> Vec<&'a Descriptor> {
    let mut seen = HashSet::new();
    descs
        .into_iter()
        .filter(|d| seen.insert(d.digest.as_str()))
        .collect()
}

fn is_manifest(media_type: &str) -> bool {
    media_type == MANIFEST_V1 || media_type == DOCKER_MANIFEST_V2
}

fn is_index(media_type: &str) -> bool {
    media_type == INDEX_V1 || media_type == DOCKER_LIST_V2
}

fn without_ref_name(desc: &Value) -> Value {
    let mut d = desc.clone();
    if let Some(obj) = d.as_object_mut() {
        let empty = match obj.get_mut("annotations").and_then(Value::as_object_mut) {
            Some(a) => {
                a.remove(REF_NAME);
                a.is_empty()
            }
            None => false,
        };
        if empty {
            obj.remove("annotations");
        }
    }
    d
}

impl Reader<'_> {
    /// Loads and verifies the manifest or index `desc` points at, queueing
    /// its blobs and (for an index) its child manifests.
    fn load(&mut self, desc: &Descriptor, depth: usize) -> Result<Manifest, RegistryError> {
        if !is_manifest(&desc.media_type) && !is_index(&desc.media_type) {
            return Err(self.layout_err(format!(
                "{} has media type {}, which is neither an image manifest nor an image index",
                desc.digest, desc.media_type
            )));
        }
        if desc.size > MAX_MANIFEST {
            return Err(self.corrupt(desc, format!("a {} byte manifest is too large", desc.size)));
        }
        let bytes = self.read_verified(desc)?;
        let body: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(desc, format!("manifest is not a JSON object: {e}")))?;
        if let Some(mt) = body.get("mediaType").and_then(Value::as_str) {
            if mt != desc.media_type {
                return Err(self.corrupt(
                    desc,
                    format!(
                        "its mediaType {mt} contradicts the descriptor's {}",
                        desc.media_type
                    ),
                ));
            }
        }
        if is_manifest(&desc.media_type) {
            let config = body
                .get("config")
                .ok_or_else(|| self.corrupt(desc, "manifest has no config".into()))?;
            let mut blobs = vec![config];
            if let Some(layers) = body.get("layers").and_then(Value::as_array) {
                blobs.extend(layers);
            }
            for b in blobs {
                let b = Descriptor::from_json(b).map_err(|m| self.corrupt(desc, m))?;
                self.queue_blob(&b)?;
            }
        } else {
            if depth >= MAX_DEPTH {
                return Err(self.corrupt(desc, "image indexes nested too deeply".into()));
            }
            let list = body
                .get("manifests")
                .and_then(Value::as_array)
                .ok_or_else(|| self.corrupt(desc, "image index has no manifests".into()))?;
            for c in list {
                let c = Descriptor::from_json(c).map_err(|m| self.corrupt(desc, m))?;
                if self.seen.contains(&c.digest) {
                    continue;
                }
                let child = self.load(&c, depth + 1)?;
                self.seen.insert(c.digest.clone());
                self.children.push(child);
            }
        }
        Ok(Manifest {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            bytes,
        })
    }

    fn queue_blob(&mut self, desc: &Descriptor) -> Result<(), RegistryError> {
        if !self.seen.insert(desc.digest.clone()) {
            return Ok(());
        }
        let path = self.blob_path(desc)?;
        let mut f = std::fs::File::open(&path)
            .map_err(|e| self.corrupt(desc, format!("cannot open: {e}")))?;
        let (size, digest) =
            hash(&mut f).map_err(|e| self.corrupt(desc, format!("cannot read: {e}")))?;
        self.check(desc, size, &digest)?;
        self.blobs.push(Blob {
            digest: desc.digest.clone(),
            size,
            path,
        });
        Ok(())
    }

    fn read_verified(&self, desc: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        let path = self.blob_path(desc)?;
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_MANIFEST + 1).read_to_end(&mut bytes))
            .map_err(|e| self.corrupt(desc, format!("cannot read: {e}")))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        self.check(desc, bytes.len() as u64, &digest)?;
        Ok(bytes)
    }

    fn check(&self, desc: &Descriptor, size: u64, digest: &str) -> Result<(), RegistryError> {
        if size != desc.size {
            return Err(self.corrupt(
                desc,
                format!("size is {size} bytes, the descriptor says {}", desc.size),
            ));
        }
        if digest != desc.digest {
            return Err(self.corrupt(desc, format!("content hashes to {digest}")));
        }
        Ok(())
    }

    fn blob_path(&self, desc: &Descriptor) -> Result<PathBuf, RegistryError> {
        let hex = desc
            .digest
            .strip_prefix("sha256:")
            .ok_or_else(|| self.corrupt(desc, "only sha256 digests are supported".into()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(self.corrupt(desc, "malformed sha256 digest".into()));
        }
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    fn corrupt(&self, desc: &Descriptor, message: String) -> RegistryError {
        let path = match desc.digest.split_once(':') {
            Some((alg, hex)) if !hex.contains(['/', '\\']) && !alg.contains(['/', '\\']) => {
                self.dir.join("blobs").join(alg).join(hex)
            }
            _ => self.dir.join("blobs"),
        };
        RegistryError::CorruptBlob {
            digest: desc.digest.clone(),
            path,
            message,
        }
    }

    fn layout_err(&self, message: String) -> RegistryError {
        RegistryError::Layout {
            path: self.dir.to_path_buf(),
            message,
        }
    }
}

/// Size and `sha256:` digest of everything `r` yields.
pub fn hash(r: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, format!("sha256:{}", hex::encode(h.finalize()))))
}

/// The tags a layout's `index.json` gives its image: the ref names of its
/// entries that are not one platform's manifest (`TAG-ARCH` entries), in
/// order. Empty when there are none or the layout cannot be read.
pub fn layout_tags(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(dir.join("index.json")) else {
        return Vec::new();
    };
    let Ok(index) = serde_json::from_slice::<Value>(&text) else {
        return Vec::new();
    };
    let mut tags = Vec::new();
    for e in index["manifests"].as_array().into_iter().flatten() {
        if e.get("platform").is_some() {
            continue;
        }
        if let Some(t) = e["annotations"][REF_NAME].as_str() {
            if !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
            }
        }
    }
    tags
}

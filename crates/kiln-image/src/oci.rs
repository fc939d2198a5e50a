//! OCI image layouts: layers, image configuration, manifests and the index,
//! written deterministically (same root and epoch → same digests).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::tar_writer::{write_tar, TarOptions};

pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_V1: &str = "application/vnd.oci.image.config.v1+json";

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// A written layer: its blob and the digest of the uncompressed tar.
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Descriptor,
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// The runtime configuration of an image (the OCI config's `config`).
#[derive(Clone, Debug, Default)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The OCI platform of a Debian architecture: (architecture, variant).
pub fn oci_platform(debian_arch: &str) -> (&'static str, Option<&'static str>) {
    match debian_arch {
        "amd64" => ("amd64", None),
        "arm64" => ("arm64", Some("v8")),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v5")),
        "i386" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "mips64el" => ("mips64le", None),
        "loong64" => ("loong64", None),
        _ => ("unknown", None),
    }
}

use crate::tar_writer::HashingWriter as Hashing;

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Writes `bytes` as a blob; returns its descriptor.
pub fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> std::io::Result<Descriptor> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    let p = blob_path(layout, &digest);
    std::fs::create_dir_all(p.parent().unwrap())?;
    std::fs::write(&p, bytes)?;
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size: bytes.len() as u64,
    })
}

/// Tars `root` (sorted, clamped to `epoch`), compresses it and stores the
/// blob in the layout, all in one pass.
pub fn write_layer(
    layout: &Path,
    root: &Path,
    compression: Compression,
    epoch: u64,
    owners: Option<&std::collections::BTreeMap<String, (u32, u32)>>,
) -> std::io::Result<Layer> {
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".layer-{}", std::process::id()));
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let outer = Hashing::new(file);
    let opts = TarOptions {
        epoch,
        extra: &[],
        owners,
    };
    let (summary, outer) = match compression {
        Compression::Gzip => {
            // Parallel members at a middle level: layers are large; levels 4..9 differ little in size.
            let mut enc = crate::pgzip::ParallelGz::new(outer, 4);
            let s = write_tar(root, &mut enc, &opts)?;
            (s, enc.finish()?)
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(outer, 3)?;
            enc.multithread(
                std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1),
            )?;
            enc.include_checksum(false)?;
            let s = write_tar(root, &mut enc, &opts)?;
            (s, enc.finish()?)
        }
    };
    let mut outer = outer;
    outer.flush()?;
    let digest = format!("sha256:{}", hex::encode(outer.hash.finalize()));
    let size = outer.size;
    outer
        .inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&tmp, blob_path(layout, &digest))?;
    Ok(Layer {
        blob: Descriptor {
            media_type: compression.media_type().into(),
            digest,
            size,
        },
        diff_id: format!("sha256:{}", summary.sha256),
        uncompressed_size: summary.size,
    })
}

/// One platform's image: config and manifest blobs. Returns the manifest descriptor.
pub fn write_image(
    layout: &Path,
    debian_arch: &str,
    created: &str,
    run: &RunConfig,
    layers: &[Layer],
    annotations: &BTreeMap<String, String>,
) -> std::io::Result<Descriptor> {
    let (arch, variant) = oci_platform(debian_arch);
    let mut cfg = serde_json::Map::new();
    if !run.env.is_empty() {
        cfg.insert("Env".into(), json!(run.env));
    }
    if let Some(e) = &run.entrypoint {
        cfg.insert("Entrypoint".into(), json!(e));
    }
    if let Some(c) = &run.cmd {
        cfg.insert("Cmd".into(), json!(c));
    }
    if let Some(u) = &run.user {
        cfg.insert("User".into(), json!(u));
    }
    if let Some(w) = &run.working_dir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if !run.exposed_ports.is_empty() {
        let ports: BTreeMap<&String, Value> =
            run.exposed_ports.iter().map(|p| (p, json!({}))).collect();
        cfg.insert("ExposedPorts".into(), json!(ports));
    }
    if !run.labels.is_empty() {
        cfg.insert("Labels".into(), json!(run.labels));
    }
    let mut config = json!({
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": Value::Object(cfg),
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
        "history": layers.iter().map(|_| json!({ "created": created, "created_by": concat!("kiln ", env!("CARGO_PKG_VERSION")) })).collect::<Vec<_>>(),
    });
    if let Some(v) = variant {
        config["variant"] = json!(v);
    }
    let config_desc = write_blob(
        layout,
        CONFIG_V1,
        serde_json::to_string(&config)?.as_bytes(),
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "config": config_desc.json(),
        "layers": layers.iter().map(|l| l.blob.json()).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    write_blob(
        layout,
        MANIFEST_V1,
        serde_json::to_string(&manifest)?.as_bytes(),
    )
}

/// Writes `oci-layout` and `index.json`. One manifest is listed once per
/// tag; several (multi-arch) go into an image index blob listed per tag,
/// and each platform's manifest is listed too, as `TAG-ARCH` (Debian's
/// architecture name), so tools that unpack one image (umoci) can name it.
pub fn write_index(
    layout: &Path,
    manifests: &[(Descriptor, String)],
    tags: &[String],
    annotations: &BTreeMap<String, String>,
) -> std::io::Result<Descriptor> {
    std::fs::write(
        layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )?;
    let top = if manifests.len() == 1 {
        manifests[0].0.clone()
    } else {
        let list: Vec<Value> = manifests
            .iter()
            .map(|(d, debian_arch)| {
                let (arch, variant) = oci_platform(debian_arch);
                let mut platform = json!({ "architecture": arch, "os": "linux" });
                if let Some(v) = variant {
                    platform["variant"] = json!(v);
                }
                let mut j = d.json();
                j["platform"] = platform;
                j
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": INDEX_V1, "manifests": list, "annotations": annotations });
        write_blob(layout, INDEX_V1, serde_json::to_string(&index)?.as_bytes())?
    };
    let mut entries: Vec<Value> = tags
        .iter()
        .map(|t| {
            let mut j = top.json();
            j["annotations"] = json!({ "org.opencontainers.image.ref.name": t });
            j
        })
        .collect();
    if manifests.len() > 1 {
        for t in tags {
            for (d, debian_arch) in manifests {
                let (arch, variant) = oci_platform(debian_arch);
                let mut j = d.json();
                j["platform"] = json!({ "architecture": arch, "os": "linux" });
                if let Some(v) = variant {
                    j["platform"]["variant"] = json!(v);
                }
                j["annotations"] =
                    json!({ "org.opencontainers.image.ref.name": format!("{t}-{debian_arch}") });
                entries.push(j);
            }
        }
    }
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX_V1, "manifests": entries });
    std::fs::write(layout.join("index.json"), serde_json::to_string(&index)?)?;
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_well_formed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::fs::write(root.path().join("usr/bin/hello"), "#!/bin/true\n").unwrap();
        let mut digests = Vec::new();
        for _ in 0..2 {
            let l = tempfile::tempdir().unwrap();
            let layer = write_layer(
                l.path(),
                root.path(),
                Compression::Gzip,
                1_700_000_000,
                None,
            )
            .unwrap();
            let run = RunConfig {
                cmd: Some(vec!["/usr/bin/hello".into()]),
                ..Default::default()
            };
            let m = write_image(
                l.path(),
                "arm64",
                "2023-11-14T22:13:20Z",
                &run,
                std::slice::from_ref(&layer),
                &BTreeMap::new(),
            )
            .unwrap();
            let top = write_index(
                l.path(),
                &[(m.clone(), "arm64".into())],
                &["1.0".into(), "latest".into()],
                &BTreeMap::new(),
            )
            .unwrap();
            assert_eq!(top, m);
            let index: Value =
                serde_json::from_slice(&std::fs::read(l.path().join("index.json")).unwrap())
                    .unwrap();
            assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
            let manifest: Value =
                serde_json::from_slice(&std::fs::read(blob_path(l.path(), &m.digest)).unwrap())
                    .unwrap();
            let cfg_digest = manifest["config"]["digest"].as_str().unwrap();
            let cfg: Value =
                serde_json::from_slice(&std::fs::read(blob_path(l.path(), cfg_digest)).unwrap())
                    .unwrap();
            assert_eq!(cfg["architecture"], "arm64");
            assert_eq!(cfg["variant"], "v8");
            assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
            assert_eq!(cfg["rootfs"]["diff_ids"][0], layer.diff_id);
            // Every blob's name is its sha256.
            for e in std::fs::read_dir(l.path().join("blobs/sha256")).unwrap() {
                let e = e.unwrap();
                let b = std::fs::read(e.path()).unwrap();
                assert_eq!(
                    hex::encode(Sha256::digest(&b)),
                    e.file_name().to_string_lossy()
                );
            }
            digests.push(m.digest);
        }
        assert_eq!(digests[0], digests[1]);
    }
}

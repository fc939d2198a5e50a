//! The channel document in the shapes other tools read:
//!
//! - Ubuntu simplestreams: `streams/v1/index.json` (`index:1.0`) and one
//!   `products:1.0` file per channel. Products are `IMAGE:SUITE:ARCH`
//!   under the content id `org.kiln.images:CHANNEL`; versions are the
//!   tree's version keys; items are the files of that architecture (and
//!   the architecture-independent ones), with `path`, `size`, `sha256` and
//!   `ftype`. `sstream-query` and other simplestreams readers take it.
//! - Fedora CoreOS `stream.json`: `coreos/CHANNEL/IMAGE.json` with the
//!   newest version of the image, `architectures.ARCH.artifacts.PLATFORM.
//!   formats.FORMAT.disk = {location, sha256}`.
//!
//! Both are unsigned views; the signed channel document is the truth.

use std::collections::BTreeMap;

use kiln_rootfs::inroot::Root;
use serde_json::{json, Map, Value};

use crate::document::Channel;
use crate::PublishError;

pub fn content_id(channel: &str) -> String {
    format!("org.kiln.images:{channel}")
}

fn write_json(root: &Root, rel: &str, v: &Value) -> Result<(), PublishError> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("JSON");
    bytes.push(b'\n');
    crate::tree::no_links(root, rel)?;
    root.write(rel, &bytes, 0o644)
        .map_err(PublishError::io(format!(
            "writing {rel} in {}",
            root.path().display()
        )))
}

/// Fedora CoreOS names architectures as the kernel does.
pub fn coreos_arch(debian: &str) -> &str {
    match debian {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "ppc64el" => "ppc64le",
        "i386" => "i686",
        other => other,
    }
}

/// The simplestreams product files of `doc`.
pub fn products(doc: &Channel) -> Value {
    let mut products = Map::new();
    for (name, image) in &doc.images {
        for (key, v) in &image.versions {
            for arch in &v.architectures {
                let product = format!("{name}:{}:{arch}", v.suite);
                let entry = products.entry(product).or_insert_with(|| {
                    json!({
                        "image": name,
                        "arch": arch,
                        "os": "debian",
                        "release": v.suite,
                        "versions": {},
                    })
                });
                let mut items = Map::new();
                for f in &v.files {
                    if f.architecture.as_deref().is_some_and(|a| a != arch) {
                        continue;
                    }
                    let file = f.path.rsplit('/').next().unwrap_or(&f.path);
                    items.insert(
                        file.to_string(),
                        json!({
                            "ftype": f.format.clone().unwrap_or_else(|| f.role.clone()),
                            "path": f.path,
                            "size": f.size,
                            "sha256": f.sha256,
                        }),
                    );
                }
                entry["versions"][key] = json!({
                    "build_id": v.build_id,
                    "version_name": v.image_version,
                    "pubname": format!("{name}-{}-{arch}-{key}", v.suite),
                    "items": items,
                });
            }
        }
    }
    json!({
        "format": "products:1.0",
        "datatype": "image-downloads",
        "content_id": content_id(&doc.channel),
        "updated": kiln_archive::date::format_rfc2822(crate::parse_rfc3339(&doc.generated).unwrap_or(0)),
        "products": products,
    })
}

/// The stream.json of one image: its newest version.
pub fn stream_json(doc: &Channel, image: &str, base_url: Option<&str>) -> Option<Value> {
    let (key, v) = doc.images.get(image)?.versions.iter().next_back()?;
    let location = |p: &str| match base_url {
        Some(b) => format!("{}/{p}", b.trim_end_matches('/')),
        None => p.to_string(),
    };
    let mut archs: BTreeMap<String, Value> = BTreeMap::new();
    for arch in &v.architectures {
        let mut artifacts = Map::new();
        for f in v.files.iter().filter(|f| f.role == "artifact") {
            if f.architecture.as_deref().is_some_and(|a| a != arch) {
                continue;
            }
            let (platform, format) = match f.format.as_deref() {
                Some("disk") => ("metal", "raw"),
                Some("qcow2") => ("qemu", "qcow2"),
                Some("vhd") => ("azure", "vhd"),
                Some("gce") => ("gcp", "tar.gz"),
                Some("tar") => ("rootfs", "tar"),
                Some("oci") => ("container", "oci-archive"),
                _ => continue,
            };
            let p = artifacts
                .entry(platform.to_string())
                .or_insert_with(|| json!({ "release": key, "formats": {} }));
            p["formats"][format] = json!({
                "disk": { "location": location(&f.path), "sha256": f.sha256, "size": f.size }
            });
        }
        archs.insert(
            coreos_arch(arch).to_string(),
            json!({ "artifacts": artifacts }),
        );
    }
    Some(json!({
        "stream": doc.channel,
        "metadata": {
            "last-modified": doc.generated,
            "generator": concat!("kiln ", env!("CARGO_PKG_VERSION")),
        },
        "architectures": archs,
    }))
}

/// Writes both exports of `doc` into the tree.
pub fn write(root: &Root, doc: &Channel, base_url: Option<&str>) -> Result<(), PublishError> {
    let id = content_id(&doc.channel);
    let products_rel = format!("streams/v1/{id}.json");
    let p = products(doc);
    write_json(root, &products_rel, &p)?;
    // The index lists every channel's products file: keep the others'
    // entries (when the existing index is readable) and replace this one.
    let mut index = root
        .read("streams/v1/index.json")
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("index").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    index.retain(|k, v| {
        k.starts_with("org.kiln.images:")
            && v.get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| crate::document::check_path(p).is_ok())
    });
    let names: Vec<String> = p["products"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    index.insert(
        id.clone(),
        json!({
            "datatype": "image-downloads",
            "format": "products:1.0",
            "path": products_rel,
            "updated": p["updated"],
            "products": names,
        }),
    );
    write_json(
        root,
        "streams/v1/index.json",
        &json!({ "format": "index:1.0", "updated": p["updated"], "index": index }),
    )?;
    for name in doc.images.keys() {
        if let Some(s) = stream_json(doc, name, base_url) {
            write_json(root, &format!("coreos/{}/{name}.json", doc.channel), &s)?;
        }
    }
    Ok(())
}

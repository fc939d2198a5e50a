//! The EC2 query API calls the publisher makes, and their XML answers
//! (read with a real XML parser; an answer that is not the expected
//! document is an error, never a guess).

use super::client::Client;
use crate::CloudError;

const VERSION: &str = "2016-11-15";

/// An image as DescribeImages lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub state: String,
    pub tags: Vec<(String, String)>,
    pub snapshots: Vec<String>,
}

impl Image {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A snapshot as DescribeSnapshots lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub state: String,
    pub tags: Vec<(String, String)>,
}

/// Form-encodes a query parameter (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// One EC2 action in `region` with its parameters; the answer's document.
pub fn call(
    c: &Client,
    region: &str,
    action: &str,
    params: &[(String, String)],
) -> Result<String, CloudError> {
    let mut body = format!("Action={action}&Version={VERSION}");
    for (k, v) in params {
        body.push('&');
        body.push_str(&enc(k));
        body.push('=');
        body.push_str(&enc(v));
    }
    let r = c.call(
        "ec2",
        region,
        action,
        "POST",
        "/",
        &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )],
        body.as_bytes(),
    )?;
    let text = String::from_utf8(r.body)
        .map_err(|_| transport(region, action, "the answer is not UTF-8"))?;
    if r.status >= 300 {
        let (code, message) = error_of(&text).unwrap_or_else(|| {
            (
                format!("HTTP{}", r.status),
                text.chars().take(200).collect(),
            )
        });
        return Err(CloudError::Api {
            service: "ec2",
            action: action.to_string(),
            region: region.to_string(),
            status: r.status,
            code,
            message,
        });
    }
    Ok(text)
}

fn transport(region: &str, action: &str, m: &str) -> CloudError {
    CloudError::Transport {
        service: "ec2",
        action: action.to_string(),
        region: region.to_string(),
        message: m.to_string(),
    }
}

/// `<Errors><Error><Code>…</Code><Message>…</Message>` of an error answer.
pub fn error_of(xml: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let e = doc.descendants().find(|n| n.has_tag_name("Error"))?;
    let text = |name: &str| {
        e.children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text())
            .unwrap_or("")
            .to_string()
    };
    Some((text("Code"), text("Message")))
}

fn parse<'a>(
    xml: &'a str,
    region: &str,
    action: &str,
) -> Result<roxmltree::Document<'a>, CloudError> {
    roxmltree::Document::parse(xml)
        .map_err(|e| transport(region, action, &format!("the answer is not XML: {e}")))
}

fn child_text(n: roxmltree::Node, name: &str) -> Option<String> {
    n.children()
        .find(|c| c.has_tag_name(name))
        .and_then(|c| c.text())
        .map(str::to_string)
}

/// The `<item>`s directly under the first element named `set`.
fn items<'a, 'i>(doc: &'a roxmltree::Document<'i>, set: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    doc.descendants()
        .find(|n| n.has_tag_name(set))
        .map(|s| s.children().filter(|c| c.has_tag_name("item")).collect())
        .unwrap_or_default()
}

fn tags_of(n: roxmltree::Node) -> Vec<(String, String)> {
    n.children()
        .find(|c| c.has_tag_name("tagSet"))
        .map(|s| {
            s.children()
                .filter(|c| c.has_tag_name("item"))
                .filter_map(|i| {
                    Some((
                        child_text(i, "key")?,
                        child_text(i, "value").unwrap_or_default(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `ami-…`, `snap-…`: the prefix, then lowercase letters and digits;
/// nothing an answer could smuggle into a URL, a record or a terminal.
fn valid_id(id: &str, prefix: &str) -> bool {
    id.len() <= 64
        && id.strip_prefix(prefix).is_some_and(|r| {
            !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn ami(id: String, region: &str, action: &str) -> Result<String, CloudError> {
    if valid_id(&id, "ami-") {
        Ok(id)
    } else {
        Err(transport(
            region,
            action,
            "the answer's image id is not one",
        ))
    }
}

/// One text element the answer must have.
fn required(
    doc: &roxmltree::Document,
    name: &str,
    region: &str,
    action: &str,
) -> Result<String, CloudError> {
    doc.descendants()
        .find(|n| n.has_tag_name(name))
        .and_then(|n| n.text())
        .map(str::to_string)
        .ok_or_else(|| transport(region, action, &format!("the answer has no <{name}>")))
}

/// Every region name the account can see (DescribeRegions, all regions).
pub fn regions(c: &Client, region: &str) -> Result<Vec<String>, CloudError> {
    let xml = call(
        c,
        region,
        "DescribeRegions",
        &[("AllRegions".into(), "true".into())],
    )?;
    let doc = parse(&xml, region, "DescribeRegions")?;
    Ok(items(&doc, "regionInfo")
        .into_iter()
        .filter_map(|i| child_text(i, "regionName"))
        .collect())
}

/// The account's own images with `filters` (name → value).
pub fn images(
    c: &Client,
    region: &str,
    filters: &[(&str, &str)],
) -> Result<Vec<Image>, CloudError> {
    let mut p: Vec<(String, String)> = vec![("Owner.1".into(), "self".into())];
    for (i, (name, value)) in filters.iter().enumerate() {
        p.push((format!("Filter.{}.Name", i + 1), name.to_string()));
        p.push((format!("Filter.{}.Value.1", i + 1), value.to_string()));
    }
    let xml = call(c, region, "DescribeImages", &p)?;
    let doc = parse(&xml, region, "DescribeImages")?;
    Ok(items(&doc, "imagesSet")
        .into_iter()
        .filter_map(|i| {
            let snapshots = i
                .descendants()
                .filter(|n| n.has_tag_name("snapshotId"))
                .filter_map(|n| n.text().map(str::to_string))
                .filter(|id| valid_id(id, "snap-"))
                .collect();
            Some(Image {
                id: child_text(i, "imageId").filter(|id| valid_id(id, "ami-"))?,
                name: child_text(i, "name").unwrap_or_default(),
                state: child_text(i, "imageState").unwrap_or_default(),
                tags: tags_of(i),
                snapshots,
            })
        })
        .collect())
}

/// The account's own snapshots with a tag.
pub fn snapshots_tagged(
    c: &Client,
    region: &str,
    key: &str,
    value: &str,
) -> Result<Vec<Snapshot>, CloudError> {
    let p = vec![
        ("Owner.1".to_string(), "self".to_string()),
        ("Filter.1.Name".into(), format!("tag:{key}")),
        ("Filter.1.Value.1".into(), value.to_string()),
    ];
    let xml = call(c, region, "DescribeSnapshots", &p)?;
    let doc = parse(&xml, region, "DescribeSnapshots")?;
    Ok(items(&doc, "snapshotSet")
        .into_iter()
        .filter_map(|i| {
            Some(Snapshot {
                id: child_text(i, "snapshotId").filter(|id| valid_id(id, "snap-"))?,
                state: child_text(i, "status").unwrap_or_default(),
                tags: tags_of(i),
            })
        })
        .collect())
}

/// The state of one snapshot (`pending`, `completed`, `error`).
pub fn snapshot_state(c: &Client, region: &str, id: &str) -> Result<String, CloudError> {
    let xml = call(
        c,
        region,
        "DescribeSnapshots",
        &[("SnapshotId.1".into(), id.into())],
    )?;
    let doc = parse(&xml, region, "DescribeSnapshots")?;
    items(&doc, "snapshotSet")
        .into_iter()
        .find(|i| child_text(*i, "snapshotId").as_deref() == Some(id))
        .and_then(|i| child_text(i, "status"))
        .ok_or_else(|| transport(region, "DescribeSnapshots", &format!("{id} is not listed")))
}

pub fn delete_snapshot(c: &Client, region: &str, id: &str) -> Result<(), CloudError> {
    call(
        c,
        region,
        "DeleteSnapshot",
        &[("SnapshotId".into(), id.into())],
    )
    .map(|_| ())
}

pub fn deregister_image(c: &Client, region: &str, id: &str) -> Result<(), CloudError> {
    call(
        c,
        region,
        "DeregisterImage",
        &[("ImageId".into(), id.into())],
    )
    .map(|_| ())
}

fn tag_params(prefix: &str, tags: &[(String, String)]) -> Vec<(String, String)> {
    let mut p = Vec::new();
    for (i, (k, v)) in tags.iter().enumerate() {
        p.push((format!("{prefix}Tag.{}.Key", i + 1), k.clone()));
        p.push((format!("{prefix}Tag.{}.Value", i + 1), v.clone()));
    }
    p
}

pub fn create_tags(
    c: &Client,
    region: &str,
    id: &str,
    tags: &[(String, String)],
) -> Result<(), CloudError> {
    let mut p = vec![("ResourceId.1".to_string(), id.to_string())];
    p.extend(tag_params("", tags));
    call(c, region, "CreateTags", &p).map(|_| ())
}

/// What an AMI is registered with.
pub struct Registration<'a> {
    pub name: &'a str,
    pub description: &'a str,
    /// `x86_64` or `arm64`.
    pub architecture: &'a str,
    pub snapshot: &'a str,
    pub tags: &'a [(String, String)],
}

/// RegisterImage: UEFI boot, ENA, IMDSv2 only, hvm, the snapshot as the
/// root volume (gp3, deleted with the instance); tagged as it is made.
pub fn register_image(c: &Client, region: &str, r: &Registration) -> Result<String, CloudError> {
    let mut p: Vec<(String, String)> = [
        ("Name", r.name),
        ("Description", r.description),
        ("Architecture", r.architecture),
        ("RootDeviceName", "/dev/xvda"),
        ("VirtualizationType", "hvm"),
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("ImdsSupport", "v2.0"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", r.snapshot),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ("TagSpecification.1.ResourceType", "image"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    p.extend(tag_params("TagSpecification.1.", r.tags));
    let xml = call(c, region, "RegisterImage", &p)?;
    let doc = parse(&xml, region, "RegisterImage")?;
    ami(
        required(&doc, "imageId", region, "RegisterImage")?,
        region,
        "RegisterImage",
    )
}

/// CopyImage into `region` from `source_region`, tags copied.
pub fn copy_image(
    c: &Client,
    region: &str,
    source_region: &str,
    source_id: &str,
    name: &str,
    description: &str,
) -> Result<String, CloudError> {
    let p: Vec<(String, String)> = [
        ("SourceRegion", source_region),
        ("SourceImageId", source_id),
        ("Name", name),
        ("Description", description),
        ("CopyImageTags", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let xml = call(c, region, "CopyImage", &p)?;
    let doc = parse(&xml, region, "CopyImage")?;
    ami(
        required(&doc, "imageId", region, "CopyImage")?,
        region,
        "CopyImage",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_and_hostile_ones_refused() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <imagesSet>
    <item><imageId>ami-1</imageId><name>n</name><imageState>available</imageState>
      <blockDeviceMapping><item><ebs><snapshotId>snap-1</snapshotId></ebs></item></blockDeviceMapping>
      <tagSet><item><key>kiln:sha256</key><value>ab</value></item></tagSet></item>
    <item><name>no id: skipped</name></item>
  </imagesSet>
</DescribeImagesResponse>"#;
        let doc = roxmltree::Document::parse(xml).unwrap();
        let its = items(&doc, "imagesSet");
        assert_eq!(its.len(), 2);
        assert_eq!(
            tags_of(its[0]),
            [("kiln:sha256".to_string(), "ab".to_string())]
        );
        assert_eq!(
            error_of("<Response><Errors><Error><Code>AuthFailure</Code><Message>no</Message></Error></Errors></Response>"),
            Some(("AuthFailure".into(), "no".into()))
        );
        assert_eq!(error_of("<<<"), None);
        // An entity bomb is not expanded (roxmltree refuses it).
        let bomb = r#"<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;"><!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;"><!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">]><r><imageId>&g;</imageId></r>"#;
        assert!(
            parse(bomb, "r", "A").is_err()
                || required(&parse(bomb, "r", "A").unwrap(), "imageId", "r", "A")
                    .map(|s| s.len() < 1 << 20)
                    .unwrap_or(true)
        );
        assert_eq!(enc("a b/+=&é"), "a%20b%2F%2B%3D%26%C3%A9");
        assert!(valid_id("ami-0123abc", "ami-") && !valid_id("ami-", "ami-"));
        assert!(!valid_id("ami-1/../x", "ami-") && !valid_id("snap-1\u{1b}[2J", "snap-"));
    }
}

use std::fmt;
use std::str::FromStr;

use crate::RegistryError;

/// Where to push: `HOST[:PORT]/REPOSITORY:TAG`.
///
/// The registry host is always explicit (there is no default registry), and
/// so is the tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, e.g. `registry.example.org` or `127.0.0.1:5000`.
    pub registry: String,
    /// Slash-separated lowercase path components, e.g. `team/image`.
    pub repository: String,
    /// E.g. `1.0` or `latest`.
    pub tag: String,
}

impl Reference {
    /// Parses `HOST[:PORT]/REPO[/MORE]:TAG`.
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |message: &str| RegistryError::BadReference {
            reference: s.to_string(),
            message: message.to_string(),
        };
        if s.contains("://") {
            return Err(bad(
                "leave out the scheme (http:// or https://); use --insecure for plain http",
            ));
        }
        if s.contains('@') {
            return Err(bad("digest references cannot be pushed to; give a tag"));
        }
        let (registry, rest) = s
            .split_once('/')
            .ok_or_else(|| bad("no registry host: expected HOST[:PORT]/REPOSITORY:TAG"))?;
        check_registry(registry).map_err(|m| bad(&m))?;
        let (repository, tag) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("no tag: add :TAG, e.g. :latest"))?;
        check_repository(repository).map_err(|m| bad(&m))?;
        check_tag(tag).map_err(|m| bad(&m))?;
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

fn check_registry(r: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = r.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in registry host '{r}'"))?;
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("bad IPv6 address in registry host '{r}'"));
        }
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return Err(format!("bad registry host '{r}'")),
            },
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if !r.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(format!("bad registry host '{r}'"));
        }
        if !host.contains('.') && port.is_none() && host != "localhost" {
            return Err(format!(
                "'{r}' does not look like a registry host (no dot, no port); \
                 write the registry explicitly, e.g. registry.example.org/{r}"
            ));
        }
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(format!("bad port '{p}' in registry host '{r}'"));
        }
    }
    Ok(())
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("empty repository name".into());
    }
    if repo.len() > 255 {
        return Err("repository name longer than 255 characters".into());
    }
    for comp in repo.split('/') {
        if !component_ok(comp) {
            return Err(format!(
                "bad repository component '{comp}': use lowercase letters and digits, \
                 separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad tag '{tag}': up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_hosts_ports_and_nested_repositories() {
        let r = p("127.0.0.1:5000/kiln/base:1.0");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "kiln/base");
        assert_eq!(r.tag, "1.0");
        assert_eq!(r.to_string(), "127.0.0.1:5000/kiln/base:1.0");
        let r = p("registry.example.org/a/b/c-d__e.f:latest");
        assert_eq!(r.registry, "registry.example.org");
        assert_eq!(r.repository, "a/b/c-d__e.f");
        assert_eq!(p("localhost/x:y").registry, "localhost");
        assert_eq!(p("[::1]:5000/x:y").registry, "[::1]:5000");
        assert_eq!("ghcr.io/o/i:v1".parse::<Reference>().unwrap().tag, "v1");
    }

    #[test]
    fn rejects_bad_references_with_a_reason() {
        for (s, why) in [
            ("debian:12", "no registry host"),
            ("debian/base:12", "does not look like a registry host"),
            ("example.org/base", "no tag"),
            ("example.org:5000/base", "no tag"),
            ("example.org/Base:1", "bad repository component"),
            ("example.org/a//b:1", "bad repository component"),
            ("example.org/a-:1", "bad repository component"),
            ("example.org/a:-x", "bad tag"),
            ("example.org/a:", "bad tag"),
            ("example.org:0/a:1", "bad port"),
            ("example.org:http/a:1", "bad port"),
            ("https://example.org/a:1", "scheme"),
            ("example.org/a@sha256:abcd", "digest"),
            ("exa_mple.org/a:1", "bad registry host"),
        ] {
            let e = Reference::parse(s).expect_err(s).to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}

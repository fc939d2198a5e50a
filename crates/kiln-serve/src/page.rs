//! The finder page: one HTML file with its style and script inline, told
//! by a `<meta>` whether it talks to the API or filters an export itself.

use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("finder.html");
const MODE_SLOT: &str = "__KILN_FINDER_MODE__";
const CSP_SLOT: &str = "__KILN_FINDER_CSP__";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Served by [`crate::serve`]: searches ask `/api/v1/images`.
    Api,
    /// Written by [`crate::export`]: loads `api/v1/images.json` and filters.
    Static,
}

/// The page for `mode`, with a Content-Security-Policy `<meta>` that lets
/// only its own inline script and style run: even a catalog string that
/// reached the DOM as markup could not execute.
pub(crate) fn html(mode: Mode) -> String {
    let page = TEMPLATE.replace(
        MODE_SLOT,
        match mode {
            Mode::Api => "api",
            Mode::Static => "static",
        },
    );
    let policy = policy(&page);
    page.replace(CSP_SLOT, &policy)
}

/// The policy for the header (which may also forbid framing, unlike the
/// `<meta>`).
pub(crate) fn csp_header(page: &str) -> String {
    format!("{}; frame-ancestors 'none'", policy(page))
}

fn policy(page: &str) -> String {
    let script = inline(page, "script");
    let style = inline(page, "style");
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'",
        base64(&Sha256::digest(script.as_bytes())),
        base64(&Sha256::digest(style.as_bytes())),
    )
}

/// The text of the page's one `<tag>` element.
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page.find(&open).expect("the page has its element") + open.len();
    let end = start + page[start..].find(&close).expect("the element is closed");
    &page[start..end]
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_with_one_script_and_one_style() {
        for mode in [Mode::Api, Mode::Static] {
            let p = html(mode);
            assert_eq!(p.matches("<script").count(), 1);
            assert_eq!(p.matches("<style").count(), 1);
            assert!(!p.contains("__KILN_FINDER"), "a slot was left unfilled");
            for external in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
                assert!(!p.contains(external), "the page loads {external}…");
            }
            assert!(p.contains("script-src 'sha256-"));
        }
        assert!(html(Mode::Static).contains(r#"content="static""#));
        assert!(html(Mode::Api).contains(r#"content="api""#));
    }

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}

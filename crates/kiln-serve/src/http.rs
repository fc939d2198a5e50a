//! A small HTTP/1.1 server for the finder, for clients that may be hostile:
//! one request per connection, GET and HEAD only, at most [`MAX_HEAD`]
//! bytes of request head read within [`HEAD_DEADLINE`], at most
//! [`MAX_CONNECTIONS`] connections at once, and no panic escapes a request.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_catalog::{Catalog, Found, Query};

use crate::api::{self, ApiError};
use crate::page::{self, Mode};
use crate::ServeError;

/// The most a request line plus headers may take.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its whole request head.
pub(crate) const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more are told 503 and closed.
const MAX_CONNECTIONS: usize = 64;
/// How often the accept loop looks at `stop`.
const POLL: Duration = Duration::from_millis(20);

/// Serves the finder for the catalog at `catalog` on `addr` (`HOST:PORT`;
/// port 0 picks a free one) until `stop` is set, calling `ready` with the
/// bound address once it accepts connections. Builds recorded meanwhile
/// show up at once, and a catalog file replaced is reopened.
/// Returns after the connections in flight have finished.
pub fn serve(
    catalog: &Path,
    addr: &str,
    ready: &dyn Fn(SocketAddr),
    stop: &AtomicBool,
) -> Result<(), ServeError> {
    // A path that is no catalog is refused now, not on the first request.
    drop(crate::open_catalog(catalog)?);
    let bind = |source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let active = AtomicUsize::new(0);
    let app = App {
        catalog,
        open: Mutex::new(None),
    };
    ready(local);
    std::thread::scope(|scope| {
        while !stop.load(Ordering::SeqCst) {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(POLL);
                    continue;
                }
                // Out of descriptors or a connection reset before accept:
                // wait and go on, the server stays up.
                Err(_) => {
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                let mut stream = stream;
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let r = error_response(&ApiError::new(503, "too many connections; try again"));
                let _ = stream.write_all(&r.bytes(false));
                continue;
            }
            let (app, active) = (&app, &active);
            let spawned = std::thread::Builder::new()
                .name("kiln-serve-conn".into())
                .spawn_scoped(scope, move || {
                    connection(stream, app);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    });
    Ok(())
}

struct App<'a> {
    catalog: &'a Path,
    /// The open catalog and the file it was opened from. One connection
    /// sees every build recorded meanwhile; a file replaced (an import
    /// into a new file renamed over it) is opened anew.
    open: Mutex<Option<(FileId, Catalog)>>,
}

/// Which file a path names now.
type FileId = (u64, u64);

fn file_id(p: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

impl App<'_> {
    /// Runs `q` on the catalog, one request at a time: the catalog's
    /// connection is not shared between threads.
    fn find(&self, q: &Query) -> Result<Vec<Found>, ApiError> {
        self.with_catalog(|c| c.find(q))
    }

    fn with_catalog<T>(
        &self,
        read: impl FnOnce(&Catalog) -> Result<T, kiln_catalog::CatalogError>,
    ) -> Result<T, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let Some(now) = file_id(self.catalog) else {
            // Not a file (a database URL, or gone): open it for this request.
            *open = None;
            return Ok(read(&Catalog::open_read_only(self.catalog)?)?);
        };
        if open.as_ref().map(|(id, _)| *id) != Some(now) {
            *open = None;
            let c = Catalog::open_read_only(self.catalog)?;
            *open = Some((now, c));
        }
        let (_, c) = open.as_ref().expect("opened above");
        Ok(read(c)?)
    }
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Request {
    pub head_only: bool,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
}

pub(crate) struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).expect("JSON serialises");
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            headers: vec![("Cache-Control", "no-store".into())],
            body,
        }
    }

    fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            out += &format!("{k}: {v}\r\n");
        }
        out += "\r\n";
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn error_response(e: &ApiError) -> Response {
    let mut r = Response::json(e.status, &e.body());
    if e.status == 405 {
        r.headers.push(("Allow", "GET, HEAD".into()));
    }
    r
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn connection(mut stream: TcpStream, app: &App) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(HEAD_DEADLINE));
    let (response, head_only) = match read_head(&mut stream) {
        Ok(head) => match parse_head(&head) {
            Ok(req) => {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| app.route(&req)))
                    .unwrap_or_else(|_| {
                        error_response(&ApiError::new(500, "internal error answering this request"))
                    });
                (r, req.head_only)
            }
            Err(e) => (error_response(&e), false),
        },
        Err(HeadError::TooLarge) => (
            error_response(&ApiError::new(
                431,
                format!("request line and headers are larger than {MAX_HEAD} bytes"),
            )),
            false,
        ),
        Err(HeadError::TimedOut) => (
            error_response(&ApiError::new(
                408,
                "the request head did not arrive in time",
            )),
            false,
        ),
        Err(HeadError::Closed) => return,
    };
    let _ = stream.write_all(&response.bytes(head_only));
    let _ = stream.flush();
    // Lingering close: read what the client still sends (a body we did
    // not want) for a moment, so closing does not reset the connection
    // before the client read the answer.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 256 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[derive(Debug)]
enum HeadError {
    TooLarge,
    TimedOut,
    /// The client went away (or sent nothing): no answer.
    Closed,
}

/// Reads up to the blank line that ends the head, within the deadline.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(if buf.is_empty() {
                    HeadError::Closed
                } else {
                    HeadError::TimedOut
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Closed),
        };
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            let end = from + end;
            if end > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends in `b` (just past `\r\n\r\n` or `\n\n`).
fn head_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Parses a request head; anything malformed is a 400, a method other
/// than GET or HEAD a 405.
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, ApiError> {
    let bad = |m: &str| ApiError::new(400, format!("bad request: {m}"));
    let text = std::str::from_utf8(head).map_err(|_| bad("the request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the request line is not `METHOD TARGET HTTP/1.1`"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(bad("only HTTP/1.0 and HTTP/1.1 are spoken here"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad("the method is not a word"));
    }
    for h in lines.filter(|l| !l.is_empty()) {
        let Some((name, _)) = h.split_once(':') else {
            return Err(bad("a header line has no `:`"));
        };
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(bad("a header name is empty or has spaces"));
        }
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut e = ApiError::new(405, format!("method {method} is not allowed here"));
            e.hint = Some("the finder answers GET and HEAD".into());
            return Err(e);
        }
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("the target is not an absolute path"));
    }
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut pairs = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| {
                let mut e = bad("bad percent-encoding in the query");
                e.hint = Some("encode `%` as %25; `+` is a plus sign here, a space is %20".into());
                e
            })
        };
        pairs.push((decode(k)?, decode(v)?));
    }
    Ok(Request {
        head_only,
        path: path.to_string(),
        query: pairs,
    })
}

/// Decodes `%XX` escapes (a `+` stays a plus: Debian package names and
/// versions have them). `None` for a broken escape or non-UTF-8 result.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl App<'_> {
    fn route(&self, req: &Request) -> Response {
        match self.answer(req) {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    fn answer(&self, req: &Request) -> Result<Response, ApiError> {
        let no_query = || {
            if let Some((k, _)) = req.query.first() {
                let mut e = ApiError::new(400, format!("unknown query parameter `{k}`"));
                e.parameter = Some(k.clone());
                e.hint = Some("this page takes no query parameters".into());
                return Err(e);
            }
            Ok(())
        };
        match req.path.as_str() {
            "/" | "/index.html" => {
                // The page reads its own query (`?image=NAME` opens that
                // image's view); nothing here to refuse.
                let html = page::html(Mode::Api);
                Ok(Response {
                    status: 200,
                    content_type: "text/html; charset=utf-8",
                    headers: vec![
                        ("Content-Security-Policy", page::csp_header(&html)),
                        ("Cache-Control", "no-cache".into()),
                    ],
                    body: html.into_bytes(),
                })
            }
            "/api/v1/images" => {
                let s = api::query(&req.query)?;
                let found = self.find(&s.query)?;
                Ok(Response::json(200, &api::images_document(&found, s.limit)))
            }
            "/api/v1/facets" => {
                no_query()?;
                let f = self.with_catalog(|c| c.facets())?;
                Ok(Response::json(200, &api::facets_document(&f)))
            }
            p => {
                let Some(raw) = p.strip_prefix("/api/v1/images/").filter(|r| !r.is_empty()) else {
                    return Err(ApiError::new(404, format!("nothing here: {p}")));
                };
                no_query()?;
                let name = percent_decode(raw)
                    .ok_or_else(|| ApiError::new(400, "bad percent-encoding in the image name"))?;
                let found = self.find(&Query {
                    image: Some(name.clone()),
                    ..Default::default()
                })?;
                if found.is_empty() {
                    return Err(ApiError::new(
                        404,
                        format!("no image named {name:?} in the catalog"),
                    ));
                }
                let versions: Vec<_> = found.iter().collect();
                Ok(Response::json(200, &api::image_document(&name, &versions)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_parse_and_garbage_is_a_400() {
        let r = parse_head(b"GET /api/v1/images?package=libstdc%2B%2B6%3E%3D1+x&latest=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.path, "/api/v1/images");
        assert_eq!(
            r.query,
            [
                ("package".to_string(), "libstdc++6>=1+x".to_string()),
                ("latest".into(), "1".into())
            ]
        );
        assert!(parse_head(b"HEAD / HTTP/1.0\n\n").unwrap().head_only);
        for garbage in [
            &b"\xff\xfe\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /?a=%zz HTTP/1.1\r\n\r\n",
            b"GET /?a=%ff HTTP/1.1\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
        ] {
            let e = parse_head(garbage).unwrap_err();
            assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        }
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\n\r\n").unwrap_err().status,
            405
        );
    }

    #[test]
    fn percent_decoding_keeps_plus_and_refuses_broken_escapes() {
        assert_eq!(percent_decode("a%3C%3c1+2%20").as_deref(), Some("a<<1+2 "));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}

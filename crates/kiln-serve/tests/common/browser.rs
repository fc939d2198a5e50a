//! Headless Chromium driven over the DevTools protocol, killed (with every
//! process it started) on drop.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// How long any one wait may take.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Chromium {
    child: Child,
    port: u16,
    browser_ws: String,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chromium {
    pub fn launch() -> Chromium {
        let bin = std::env::var("KILN_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromium.log");
        let child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--disable-crash-reporter",
                "--disable-breakpad",
                "--window-size=1280,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            // Anything it writes beside the profile goes into the profile.
            .env("HOME", profile.path())
            .env("XDG_CONFIG_HOME", profile.path().join("config"))
            .env("XDG_CACHE_HOME", profile.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            // Its own process group, so drop can end all it started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin}: {e}; install it with `apt-get install chromium` (or set KILN_CHROMIUM)")
            });
        let mut c = Chromium {
            child,
            port: 0,
            browser_ws: String::new(),
            log,
            _profile: profile,
        };
        let file = c._profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    c.port = port.parse().unwrap();
                    c.browser_ws = format!("ws://127.0.0.1:{}{path}", c.port);
                    break;
                }
            }
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!(
                    "chromium exited ({status}) before listening:\n{}",
                    c.log_text()
                );
            }
            if start.elapsed() > WAIT {
                panic!(
                    "chromium wrote no DevToolsActivePort within {WAIT:?}:\n{}",
                    c.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A new tab, driven over its own connection.
    pub fn tab(&self) -> Tab {
        let mut browser = Cdp::connect(&self.browser_ws);
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().unwrap();
        let mut tab = Tab {
            cdp: Cdp::connect(&format!("ws://127.0.0.1:{}/devtools/page/{id}", self.port)),
        };
        tab.cdp.call("Page.enable", json!({}));
        tab.cdp.call("Runtime.enable", json!({}));
        tab.cdp.call("Log.enable", json!({}));
        tab
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signals the process group this test started, nothing else.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Its crash handlers start their own sessions; they are the ones
        // whose command line names this profile.
        let profile = self._profile.path().to_string_lossy().into_owned();
        let ours: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&profile))
            })
            .collect();
        for pid in &ours {
            // SAFETY: a process this browser started, by its id.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        let start = Instant::now();
        while ours
            .iter()
            .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One DevTools protocol connection.
pub struct Cdp {
    ws: WebSocket<TcpStream>,
    next: u64,
    /// Exceptions and console errors seen so far.
    pub problems: Vec<String>,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, _) = tungstenite::client(url, stream)
            .unwrap_or_else(|e| panic!("DevTools websocket {url}: {e}"));
        Cdp {
            ws,
            next: 0,
            problems: Vec::new(),
        }
    }

    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < WAIT,
                "no answer to {method} within {WAIT:?}"
            );
            let m = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("reading the answer to {method}: {e}"));
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            match v.get("id").and_then(Value::as_u64) {
                Some(i) if i == id => {
                    if let Some(e) = v.get("error") {
                        panic!("{method} failed: {e}");
                    }
                    return v["result"].clone();
                }
                Some(_) => {}
                None => self.event(&v),
            }
        }
    }

    fn event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .problems
                .push(format!("exception: {}", v["params"]["exceptionDetails"])),
            Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                let text = v["params"]["entry"]["text"].as_str().unwrap_or("");
                // A test asks for a missing detail file or a bad query on
                // purpose; the browser logs those failed fetches.
                if !text.contains("the server responded with a status of") {
                    self.problems.push(format!("console: {text}"));
                }
            }
            _ => {}
        }
    }
}

pub struct Tab {
    pub cdp: Cdp,
}

impl Tab {
    pub fn navigate(&mut self, url: &str) {
        self.cdp.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            "document.readyState === 'complete'",
            &format!("{url} to load"),
        );
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.cdp.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    pub fn wait_for(&mut self, condition: &str, what: &str) {
        let start = Instant::now();
        loop {
            if self.eval(&format!("!!({condition})")) == Value::Bool(true) {
                return;
            }
            if start.elapsed() > WAIT {
                let state = self.eval(
                    "JSON.stringify({url: location.href, state: document.body && document.body.dataset.state, \
                     error: (document.getElementById('error') || {}).textContent, \
                     summary: (document.getElementById('summary') || {}).textContent})",
                );
                panic!(
                    "waited {WAIT:?} for {what} ({condition}); page: {state}; problems: {:?}",
                    self.cdp.problems
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Focuses `selector`, clears it and types `text` as keyboard input.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); e.focus(); e.select(); return true; }})()"
        ));
        self.cdp.call("Input.insertText", json!({"text": text}));
    }

    pub fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({"type": kind, "key": "Enter", "code": "Enter",
                "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13});
            if kind == "keyDown" {
                p["text"] = "\r".into();
            }
            self.cdp.call("Input.dispatchKeyEvent", p);
        }
    }

    /// A real mouse click in the middle of the first element `selector` finds.
    pub fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ));
        let (x, y) = match &r {
            Value::Array(a) => (a[0].as_f64().unwrap(), a[1].as_f64().unwrap()),
            _ => panic!("nothing to click: {selector}"),
        };
        self.cdp.call(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.cdp.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// The visible page as PNG bytes.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .cdp
            .call("Page.captureScreenshot", json!({"format": "png"}));
        base64_decode(r["data"].as_str().unwrap())
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | val(c) << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

/// The size and number of distinct colours of a PNG.
pub fn png_colours(bytes: &[u8]) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    for px in buf[..info.buffer_size()].chunks(channels) {
        colours.insert(px.to_vec());
    }
    (info.width, info.height, colours.len())
}

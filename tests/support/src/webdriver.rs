//! Headless Chromium driven over the W3C WebDriver protocol (Debian's `chromium` and
//! `chromium-driver`), with the [`crate::http`] client: just the commands the page tests use.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http;

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The W3C WebDriver code of the Tab key, for [`Browser::press`].
pub const TAB: &str = "\u{E004}";
/// The W3C WebDriver code of the Enter key.
pub const ENTER: &str = "\u{E007}";

/// Where Chromium and its driver are, if both are installed.
pub fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let which = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
        })
    };
    let browser = which(&["chromium", "chromium-browser", "google-chrome"])?;
    let driver = which(&["chromedriver"]).or_else(|| {
        let p = PathBuf::from("/usr/lib/chromium/chromedriver");
        p.is_file().then_some(p)
    })?;
    Some((browser, driver))
}

/// A chromedriver process and one headless browser session; both end when dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

/// The value of a WebDriver answer, or its error.
fn value(r: http::Response) -> Result<Value, String> {
    let v = r.json();
    if r.status == 200 {
        Ok(v["value"].clone())
    } else {
        Err(format!("WebDriver {}: {}", r.status, v["value"]))
    }
}

impl Browser {
    /// Start `driver` on a free loopback port and open a headless session of `browser`.
    pub fn start(browser: &Path, driver: &Path) -> Result<Browser, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", driver.display()))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut b = Browser {
            driver: child,
            addr,
            session: String::new(),
        };
        let start = Instant::now();
        loop {
            let ready = http::Connection::open(addr)
                .and_then(|mut c| c.send("GET", "/status", &[], &[]))
                .map(|r| r.json()["value"]["ready"] == true)
                .unwrap_or(false);
            if ready {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err("chromedriver did not become ready in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {v}"))?
            .to_string();
        Ok(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        let r = http::Connection::open(self.addr)
            .and_then(|mut c| c.send(method, path, headers, body.as_bytes()))
            .map_err(|e| format!("WebDriver {method} {path}: {e}"))?;
        value(r)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Load `url`.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// The current URL.
    pub fn url(&self) -> Result<String, String> {
        Ok(self
            .session_call("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Go back in history.
    pub fn back(&self) -> Result<(), String> {
        self.session_call("POST", "/back", Some(json!({})))
            .map(|_| ())
    }

    /// Run `script` (a function body; `arguments` are `args`) and return its value.
    pub fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The reference of the element matching the CSS `selector`.
    pub fn find(&self, selector: &str) -> Result<String, String> {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": selector})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element {selector}: {v}"))
    }

    /// Click the element matching `selector`.
    pub fn click(&self, selector: &str) -> Result<(), String> {
        let id = self.find(selector)?;
        self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})))
            .map(|_| ())
    }

    /// Type `text` into the element matching `selector` (for a file input: a path to upload).
    pub fn send_keys(&self, selector: &str, text: &str) -> Result<(), String> {
        let id = self.find(selector)?;
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// Press and release each key in turn, as a keyboard would, on whatever has the focus (W3C
    /// key codes: `TAB`, `ENTER`).
    pub fn press(&self, keys: &[&str]) -> Result<(), String> {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({ "type": "keyDown", "value": k }));
            actions.push(json!({ "type": "keyUp", "value": k }));
        }
        self.session_call(
            "POST",
            "/actions",
            Some(json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] })),
        )
        .map(|_| ())
    }

    /// Wait (at most `timeout`) until `script` returns something truthy; returns it.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            let v = self.eval(script, vec![])?;
            let truthy = !(v.is_null()
                || v == false
                || v == 0
                || v.as_str() == Some("")
                || v.as_array().is_some_and(|a| a.is_empty()));
            if truthy {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                return Err(format!("timed out after {timeout:?} waiting for: {script}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resize the window (a phone's viewport, say).
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<(), String> {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .map(|_| ())
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Result<Vec<u8>, String> {
        let v = self.session_call("GET", "/screenshot", None)?;
        lookalike::api::request::decode_base64(v.as_str().unwrap_or_default())
            .map_err(|e| e.to_string())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

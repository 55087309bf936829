//! A real headless Chromium, driven over the W3C WebDriver protocol through Debian's
//! `chromedriver` (spawned on a free loopback port, killed on drop).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{ServerProcess, find_server_binary, free_loopback_port, wait_for_port};

/// The WebDriver id of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session.
pub struct Browser {
    base: String,
    _driver: ServerProcess,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width`×`height` window.
    /// `None` (outside CI) when Chromium or chromedriver is missing.
    pub fn start(width: u32, height: u32) -> Option<Self> {
        let hint = "apt-get install chromium chromium-driver (scripts/test.sh does)";
        let driver_binary = find_server_binary("chromedriver", hint)?;
        let chromium = find_server_binary("chromium", hint)?;
        let port = free_loopback_port();
        let driver = ServerProcess::spawn(
            "chromedriver",
            Command::new(driver_binary)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(port, "chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
            }
        }}});
        let created = call("POST", &format!("{base}/session"), Some(&capabilities));
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"));
        Some(Self {
            base: format!("{base}/session/{session}"),
            _driver: driver,
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        call(method, &format!("{}{path}", self.base), body)
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The current page's URL.
    pub fn url(&self) -> String {
        self.command("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element matching the CSS selector, waiting up to 10 s for it.
    pub fn find(&self, selector: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = call_raw(
                "POST",
                &format!("{}/element", self.base),
                Some(&json!({"using": "css selector", "value": selector})),
            );
            if let Some(id) = found["value"][ELEMENT_KEY].as_str() {
                return id.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no element '{selector}' on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many elements match the CSS selector now.
    pub fn count(&self, selector: &str) -> usize {
        let found = self.command(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": selector})),
        );
        found.as_array().map_or(0, Vec::len)
    }

    /// Types `text` into the element matching `selector`, after clearing it.
    pub fn type_into(&self, selector: &str, text: &str) {
        let element = self.find(selector);
        self.command(
            "POST",
            &format!("/element/{element}/clear"),
            Some(&json!({})),
        );
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// Clicks the element matching `selector` (a link or a submit button) and waits until the
    /// page it leads to has replaced this one and finished loading, so what is read next is
    /// never the old page.
    pub fn click(&self, selector: &str) {
        let element = self.find(selector);
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = call_raw(
                "GET",
                &format!("{}/element/{element}/name", self.base),
                None,
            );
            let replaced = probe["value"]["error"].as_str() == Some("stale element reference");
            let state = call_raw(
                "POST",
                &format!("{}/execute/sync", self.base),
                Some(&json!({"script": "return document.readyState", "args": []})),
            );
            if replaced && state["value"].as_str() == Some("complete") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clicking '{selector}' led nowhere"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The rendered text of the element matching `selector`.
    pub fn text(&self, selector: &str) -> String {
        let element = self.find(selector);
        self.command("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's title.
    pub fn title(&self) -> String {
        self.command("GET", "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG screenshot of the viewport to `path` and returns its bytes.
    pub fn screenshot(&self, path: &Path) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", None);
        let bytes = larder_core::codec::base64_decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("the screenshot is not base64"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|error| panic!("{error}"));
        }
        std::fs::write(path, &bytes).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        bytes
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call_raw("DELETE", &self.base, None);
    }
}

/// A WebDriver call; panics on a WebDriver error; returns `value`.
fn call(method: &str, url: &str, body: Option<&Value>) -> Value {
    let answer = call_raw(method, url, body);
    if let Some(error) = answer["value"]["error"].as_str() {
        panic!(
            "WebDriver {method} {url}: {error}: {}",
            answer["value"]["message"]
        );
    }
    answer["value"].clone()
}

fn call_raw(method: &str, url: &str, body: Option<&Value>) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, Some(body)) => agent.post(url).send_json(body),
        (_, None) => agent.post(url).send_json(json!({})),
    };
    match response {
        Ok(mut response) => response.body_mut().read_json().unwrap_or(Value::Null),
        Err(error) => panic!("WebDriver {method} {url}: {error}"),
    }
}

//! A real Chromium for the browser tests: `chromedriver` on a free port, headless Chromium
//! with a fresh profile, driven with fantoccini. Without Debian's `chromium` +
//! `chromium-driver` a test prints a skip (a failure under `SATCHEL_TEST_REQUIRE_ALL=1`).
//! Screenshots land in `target/screenshots/` for a human to look at.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use satchel::testing::skip;
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it answers, opens headless Chromium.
    pub async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// [`Browser::start`] with extra Chromium flags (e.g. `--force-dark-mode`).
    pub async fn start_with(extra_args: &[&str]) -> Option<Self> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
            skip("chromium / chromium-driver not installed (apt-get install -y chromium chromium-driver)");
            return None;
        }
        let port = satchel::testing::free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(r) = http.get(&status).send().await {
                if r.status().is_success() {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready {
            let _ = driver.kill();
            panic!("chromedriver did not become ready on port {port}");
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| (*a).to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra_args.iter().map(|a| (*a).to_string()));
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("open a Chromium session");
        Some(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    /// A screenshot of the viewport.
    pub async fn shot(&self, name: &str) {
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("screenshots dir");
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// A screenshot of the whole page (the window grows to the document's height first).
    pub async fn shot_full(&self, name: &str) {
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("screenshots dir");
        let (w, h) = self.client.get_window_size().await.expect("window size");
        let (w, h) = (u32::try_from(w).unwrap_or(1280), u32::try_from(h).unwrap_or(900));
        let full = self
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .expect("page height")
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(h)
            .clamp(h, 4000);
        self.client.set_window_size(w, full + 140).await.expect("grow window");
        let png = self.client.screenshot().await.expect("screenshot");
        self.client.set_window_size(w, h).await.expect("restore window");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Viewport-sized screenshots down a long page (`name-1.png`, `name-2.png`, …), for phone widths.
    pub async fn shot_pages(&self, name: &str) {
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("screenshots dir");
        let (_, h) = self.client.get_window_size().await.expect("window size");
        let full = self
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await
            .expect("page height")
            .as_u64()
            .unwrap_or(h);
        let view = self
            .client
            .execute("return window.innerHeight", vec![])
            .await
            .expect("viewport")
            .as_u64()
            .unwrap_or(h)
            .max(1);
        for (i, y) in (0..full)
            .step_by(usize::try_from(view).unwrap_or(900))
            .take(6)
            .enumerate()
        {
            self.client
                .execute(&format!("window.scrollTo(0, {y})"), vec![])
                .await
                .expect("scroll");
            let png = self.client.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(format!("{name}-{}.png", i + 1)), png).expect("write screenshot");
        }
        self.client
            .execute("window.scrollTo(0, 0)", vec![])
            .await
            .expect("scroll");
    }

    /// The text of an element, waiting (up to 30 s) for it: a click that navigates may still
    /// be loading the next page when the test reads it.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    pub async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    /// Clicks something that loads a new page (a form's submit button, a link) and waits until
    /// the new document has loaded, so what the test reads next is the next page — not a
    /// notice or a status left on the old one.
    pub async fn submit(&self, css: &str) {
        self.client
            .execute("window.__satchelOldPage = true", vec![])
            .await
            .expect("mark the page");
        self.click(css).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let old = self
                .client
                .execute(
                    "return window.__satchelOldPage === true || document.readyState !== 'complete'",
                    vec![],
                )
                .await;
            if matches!(old, Ok(serde_json::Value::Bool(false))) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new page loaded after clicking {css}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Replaces an input's value.
    pub async fn fill(&self, css: &str, value: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        el.clear().await.expect("clear");
        el.send_keys(value).await.expect("type");
    }

    /// Waits (up to 30 s) for an element to appear.
    pub async fn wait(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("waiting for {css}: {e}"));
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.expect("url").path().to_string()
    }

    pub async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub fn screenshots_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")));
    target.join("screenshots")
}

/// Tabs until the focused element has `id`, then returns it (keyboard-only navigation).
pub async fn tab_to(c: &Client, id: &str) -> fantoccini::elements::Element {
    let tab = String::from(char::from(Key::Tab));
    for _ in 0..40 {
        let el = c.active_element().await.expect("focused element");
        if el.attr("id").await.expect("id").as_deref() == Some(id) {
            return el;
        }
        el.send_keys(&tab).await.expect("tab");
    }
    panic!("never reached #{id} with Tab");
}

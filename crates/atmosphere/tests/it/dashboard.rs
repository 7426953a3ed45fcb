//! The web dashboard in a real headless Chromium, driven over WebDriver (chromedriver): the page
//! goes live from the node's event stream, lists the node and the virtual light its bridge
//! commissioned, switches the light from its button (the device itself reports ON), and sends an
//! intent from its box that switches it off again. A screenshot is kept as the test's artifact.

use std::time::Duration;

use serde_json::{Value, json};

use crate::kit::{self, cli, eventually};
use crate::matter::virtual_device_with;

/// A chromedriver process and one browser session on it.
struct Browser {
    driver: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is missing: scripts/setup installs chromium and chromium-driver");
        let http = kit::http();
        let root = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver ready", || async {
            let status: Value = http
                .get(format!("{root}/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;
        let session: Value = http
            .post(format!("{root}/session"))
            .json(
                &json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1000"],
                }}}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {session}"))
            .to_owned();
        Self {
            driver,
            base: format!("{root}/session/{id}"),
            http,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    /// Ends the session: chromedriver closes the browser (killing chromedriver alone would leave
    /// Chromium running).
    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// The element `css` selects, if the page has it now.
    async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()?
            .iter()
            .find(|(k, _)| k.starts_with("element-"))
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
    }

    async fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        let text = self
            .command(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                None,
            )
            .await;
        text.as_str().map(str::to_owned)
    }

    async fn click(&self, css: &str) -> Option<()> {
        let element = self.find(css).await?;
        let done = self
            .command(
                reqwest::Method::POST,
                &format!("/element/{element}/click"),
                Some(json!({})),
            )
            .await;
        done.is_null().then_some(())
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await.expect(css);
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        data_encoding::BASE64
            .decode(png.as_str().unwrap().as_bytes())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_mesh_and_switches_the_light_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let mut light =
        virtual_device_with(&dir.path().join("light"), 0, None, &["--mdns", "off"]).await;
    let port = light.ready["port"].as_u64().unwrap();
    let code = light.ready["pairing_code"].as_str().unwrap().to_owned();
    let mesh = kit::unique_mesh("dashboard");
    let mut args = kit::loopback_args(&mesh, "off", &[], &[]);
    args.push("--matter".into());
    let node = kit::start("garage", &dir.path().join("garage"), &args).await;
    kit::form_mesh(&[&node]);
    let api = node.api();
    cli(&[
        "--api",
        &api,
        "matter",
        "commission",
        &code,
        "--address",
        &format!("127.0.0.1:{port}"),
        "--name",
        "garage light",
        "--room",
        "garage",
    ]);

    let browser = Browser::start().await;
    browser.open(&format!("http://{api}/")).await;
    eventually(Duration::from_secs(30), "the page goes live", || async {
        (browser.text("#live").await? == "live").then_some(())
    })
    .await;
    let node_row = browser.text("tr[data-node=\"garage\"]").await.unwrap();
    assert!(
        node_row.contains("healthy") && node_row.contains("matter"),
        "{node_row}"
    );

    // The light's button switches the real device.
    let row = "tr[data-device=\"garage light\"]";
    eventually(
        Duration::from_secs(30),
        "the light's switch is on the page",
        || async { browser.click(&format!("{row} button.switch")).await },
    )
    .await;
    assert!(light.next_change().await, "the device reports ON");
    eventually(
        Duration::from_secs(15),
        "the page shows the light ON",
        || async { (browser.text(&format!("{row} td.state")).await? == "ON").then_some(()) },
    )
    .await;

    // An intent typed into the box.
    browser
        .type_into("#intent-text", "turn off the garage light")
        .await;
    browser.click("#intent-send").await.unwrap();
    assert!(!light.next_change().await, "the device reports OFF");
    eventually(
        Duration::from_secs(60),
        "the intent's answer on the page",
        || async {
            let result = browser.text("#intent-result").await?;
            result.contains("matter on garage").then_some(result)
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the intent among the recent ones",
        || async {
            let recent = browser.text("#intents").await?;
            recent.contains("turn off the garage light").then_some(())
        },
    )
    .await;

    let shot = browser.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG"), "not a PNG");
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, shot).unwrap();
    eprintln!("screenshot: {}", artifact.display());
    browser.quit().await;
}

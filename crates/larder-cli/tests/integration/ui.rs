//! The discovery UI in a real headless Chromium (Debian's `chromium` and `chromedriver`):
//! sign in with an API token, search, open a view's page (SQL, versions and what changed,
//! runs, lineage picture, online values of an entity), the lineage page. Screenshots are
//! kept under `target/ui-screenshots/` and checked.

use std::path::PathBuf;

use larder_testing::browser::Browser;

use crate::util::{DemoRepo, Server, larder_ok};

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1000;

fn screenshot_folder() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("ui-screenshots")
}

/// Checks a screenshot: a PNG of the window's size, with enough in it not to be blank.
fn check_png(bytes: &[u8], what: &str) {
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{what} is not a PNG"
    );
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    // The viewport: the window less what the browser keeps for itself.
    assert_eq!(width, WIDTH, "{what}");
    assert!((600..=HEIGHT).contains(&height), "{what}: {height} px high");
    // A blank page compresses to about a kilobyte; text, tables and the picture do not.
    assert!(
        bytes.len() > 8_000,
        "{what} looks blank ({} bytes)",
        bytes.len()
    );
}

#[test]
fn the_ui_finds_describes_and_traces_features_behind_a_login() {
    let repo = DemoRepo::init(50);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    // A second version of user_profile, so its page has a change to show.
    let definitions = repo.path.join("features/users.yaml");
    let text = std::fs::read_to_string(&definitions).unwrap();
    let bumped = text.replacen(
        "  - name: user_profile\n    version: 1\n    entities: [user]\n    source: user_profiles\n    ttl: 365d",
        "  - name: user_profile\n    version: 2\n    entities: [user]\n    source: user_profiles\n    ttl: 400d",
        1,
    );
    assert_ne!(text, bumped, "the demo's user_profile definition moved");
    std::fs::write(&definitions, bumped).unwrap();
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let token = larder_ok(
        &repo.path,
        &["token", "create", "analyst", "--scope", "read"],
    );
    let token = token.trim().to_string();
    let config_path = repo.path.join("larder.yaml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str("auth: {tokens_file: data/tokens.yaml}\n");
    std::fs::write(&config_path, config).unwrap();
    let server = Server::start(&repo.path);
    let Some(browser) = Browser::start(WIDTH, HEIGHT) else {
        return;
    };
    let shots = screenshot_folder();

    // Without a token the UI asks for one.
    browser.goto(&format!("{}/ui", server.base_url));
    assert!(
        browser.title().starts_with("Sign in"),
        "{}",
        browser.title()
    );
    assert!(
        browser
            .text("#login-message")
            .contains("requires an API token")
    );
    check_png(&browser.screenshot(&shots.join("login.png")), "login.png");
    browser.type_into("#token", "larder.analyst.wrong");
    browser.click("#sign-in");
    assert!(
        browser
            .text("#login-message")
            .contains("unknown or revoked")
    );
    browser.type_into("#token", &token);
    browser.click("#sign-in");
    assert!(browser.url().ends_with("/ui"), "{}", browser.url());
    assert_eq!(browser.count("#views a.view-link"), 2);

    // Search.
    browser.type_into("#q", "conversion");
    browser.click("#search");
    assert!(browser.url().contains("q=conversion"), "{}", browser.url());
    assert_eq!(browser.text("#view-count"), "(1)");
    let features = browser.text("#features");
    assert!(
        features.contains("user_activity:conversion_rate_30d"),
        "{features}"
    );
    assert!(!features.contains("user_profile:age"), "{features}");
    check_png(&browser.screenshot(&shots.join("search.png")), "search.png");

    // A view's page: SQL, runs, freshness, lineage picture.
    browser.click("#views a.view-link");
    assert!(
        browser.url().ends_with("/ui/views/user_activity"),
        "{}",
        browser.url()
    );
    assert!(browser.text("#sql").contains("SELECT"));
    assert!(browser.text("#runs").contains("succeeded"));
    assert!(!browser.text("#freshness").is_empty());
    assert!(browser.count("#lineage g.node") > 10);

    // Versions, what changed, and an entity's online values.
    browser.goto(&format!("{}/ui/views/user_profile", server.base_url));
    let versions = browser.text("#versions");
    assert!(
        versions.contains("v2") && versions.contains("v1"),
        "{versions}"
    );
    assert!(versions.contains("ttl"), "{versions}");
    browser.type_into("#entity-user_id", "7");
    browser.click("#lookup");
    let sample = browser.text("#sample");
    assert!(
        sample.contains("age") && sample.contains("PRESENT"),
        "{sample}"
    );
    check_png(&browser.screenshot(&shots.join("view.png")), "view.png");

    // Lineage of one feature, and the services a change would touch.
    browser.goto(&format!(
        "{}/ui/lineage?name=user_profile:age",
        server.base_url
    ));
    assert!(browser.text("#impact").contains("ranking_model"));
    assert!(browser.count("#lineage g.node") >= 4);
    check_png(
        &browser.screenshot(&shots.join("lineage.png")),
        "lineage.png",
    );
}

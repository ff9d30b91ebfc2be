//! `make demo`'s sweep (data/sweep.toml: the demo model and its int8 copy, so cells disagree),
//! its collect summary, then `report --format html` on its store, opened in a real headless browser (Debian's Chromium): the test fails on a
//! script error, on a plot with nothing drawn, on a missing heatmap or gallery, and keeps a
//! screenshot (target/tmp/html-report/report.png) to look at.
//!
//! Without a Chromium the test says SKIPPED and passes, unless DELTANN_REQUIRE_BROWSER is set
//! (CI sets it after installing the package).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, text};

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("DELTANN_CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
        Some(PathBuf::from("/usr/bin/google-chrome")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// The page's `<body ...>` tag after its script ran, and a screenshot.
fn open_in_browser(chromium: &Path, page: &Path, screenshot: &Path) -> String {
    let url = format!("file://{}", page.display());
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        "--virtual-time-budget=10000",
    ];
    let profile = tempfile::tempdir().unwrap();
    let user_dir = format!("--user-data-dir={}", profile.path().display());
    let out = Command::new(chromium)
        .args(common)
        .arg(&user_dir)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    let out = Command::new(chromium)
        .args(common)
        .arg(&user_dir)
        .arg("--window-size=1300,2600")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let start = dom.find("<body").expect("a body element");
    let end = start + dom[start..].find('>').unwrap();
    dom[start..=end].to_string()
}

fn attribute(body: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = body.find(&key)? + key.len();
    let end = start + body[start..].find('"')?;
    Some(body[start..end].to_string())
}

#[test]
fn html_report_opens_in_a_browser_with_plots_and_a_gallery() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    // The demo itself: `make demo`'s sweep, into a store of the test's own.
    let store = dir.path().join("store");
    let out = util::run(&[
        "collect",
        "--quiet",
        "--store",
        store.to_str().unwrap(),
        util::data().join("sweep.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The collect summary says the cells disagree, and what to run next.
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("disagreement: ") && !summary.contains("disagreement: none"),
        "{summary}"
    );
    assert!(
        summary.contains("--format html -o report.html"),
        "{summary}"
    );

    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("html-report");
    std::fs::create_dir_all(&keep).unwrap();
    let page = keep.join("report.html");
    let out = util::run(&[
        "report",
        store.to_str().unwrap(),
        "--format",
        "html",
        "-o",
        page.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing fetched from anywhere.
    for remote in ["http://", "https://", "src=\"//"] {
        let outside: Vec<&str> = html
            .match_indices(remote)
            .map(|(i, _)| &html[i.saturating_sub(30)..(i + 60).min(html.len())])
            .filter(|s| !s.contains("xmlns"))
            .collect();
        assert!(outside.is_empty(), "{outside:?}");
    }
    // The heatmap has a square per pair with a tooltip, some of them not zero (int8 differs).
    assert!(html.contains("efficientnet-lite0"));
    let flips: Vec<&str> = html
        .match_indices(" flips (")
        .map(|(i, _)| &html[i.saturating_sub(12)..i])
        .collect();
    assert!(!flips.is_empty(), "no heatmap tooltips");
    assert!(flips.iter().any(|s| !s.ends_with(": 0.0%")), "{flips:?}");

    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("DELTANN_REQUIRE_BROWSER").is_none(),
            "DELTANN_REQUIRE_BROWSER is set but no Chromium was found"
        );
        eprintln!("SKIPPED: no Chromium (apt-get install chromium); the page is at {page:?}");
        return;
    };
    let screenshot = keep.join("report.png");
    let _ = std::fs::remove_file(&screenshot);
    let body = open_in_browser(&chromium, &page, &screenshot);
    assert_eq!(
        attribute(&body, "data-ready").as_deref(),
        Some("1"),
        "{body}"
    );
    assert_eq!(
        attribute(&body, "data-errors"),
        None,
        "script errors: {body}"
    );
    assert_eq!(
        attribute(&body, "data-empty-plots").as_deref(),
        Some("0"),
        "{body}"
    );
    let plots: usize = attribute(&body, "data-plots").unwrap().parse().unwrap();
    // Per family (fp32 and int8 are one family): heatmap, latency, classes; plus attribution.
    assert!(plots >= 4, "{body}");
    let images: usize = attribute(&body, "data-images").unwrap().parse().unwrap();
    assert!(images >= 1, "no gallery thumbnails: {body}");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
}

//! The web UI's files as the management server serves them: the page at
//! `/`, its scripts and styles under `/ui/`, with the right content types,
//! revalidation headers, and without credentials (the page asks for them
//! and sends them to the API itself). The browser test is
//! tests/python/test_web_ui.py.

use crate::mgmt_support::Api;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;

fn root(api: &Api) -> String {
    api.base.trim_end_matches("/api").to_string()
}

fn header(resp: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The `src="..."` / `href="..."` of every ui/ asset the page loads.
fn referenced_assets(html: &str) -> Vec<String> {
    html.split('"')
        .filter(|part| part.starts_with("ui/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_credentials() {
    let api = Api::start().await;
    let root = root(&api);

    let page = api.http.get(format!("{root}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(header(&page, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&page, CACHE_CONTROL), "no-cache");
    let html = page.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");

    let assets = referenced_assets(&html);
    assert!(assets.contains(&"ui/style.css".to_string()), "{assets:?}");
    assert!(assets.contains(&"ui/app.js".to_string()), "{assets:?}");
    for asset in &assets {
        let resp = api
            .http
            .get(format!("{root}/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        let expected = if asset.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "text/javascript; charset=utf-8"
        };
        assert_eq!(header(&resp, CONTENT_TYPE), expected, "{asset}");
        assert!(!resp.text().await.unwrap().is_empty(), "{asset}");
    }
}

#[tokio::test]
async fn an_unchanged_asset_is_answered_not_modified() {
    let api = Api::start().await;
    let url = format!("{}/ui/app.js", root(&api));
    let first = api.http.get(&url).send().await.unwrap();
    let etag = header(&first, ETAG);
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");

    let again = api
        .http
        .get(&url)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, ETAG), etag);

    let stale = api
        .http
        .get(&url)
        .header(IF_NONE_MATCH, "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_ui_files_are_json_404s_and_the_api_still_needs_credentials() {
    let api = Api::start().await;
    let root = root(&api);
    for path in ["/ui/nope.js", "/ui/..%2FCargo.toml", "/ui/"] {
        let resp = api.http.get(format!("{root}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "Object Not Found", "{path}");
    }
    let anonymous = api
        .http
        .get(format!("{root}/api/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

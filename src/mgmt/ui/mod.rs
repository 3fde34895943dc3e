//! The management web UI: a single page (`/`) and its scripts and styles
//! (`/ui/{file}`), plain HTML, CSS and JavaScript embedded in the binary,
//! so there is no build step and nothing to install next to the broker.
//! The page talks only to the `/api/...` endpoints, with the user's
//! credentials sent as HTTP basic auth, so serving it needs no auth.
//!
//! Assets are answered with an `ETag` (a hash of their bytes) and
//! `Cache-Control: no-cache`: browsers revalidate each load and get a 304
//! while the binary is unchanged, and never run stale scripts after an
//! upgrade.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: HTML,
    body: include_str!("index.html"),
};

/// Everything under `/ui/`, by file name.
const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: CSS,
        body: include_str!("style.css"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_str!("api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_str!("dom.js"),
    },
    Asset {
        name: "chart.js",
        content_type: JS,
        body: include_str!("chart.js"),
    },
    Asset {
        name: "overview.js",
        content_type: JS,
        body: include_str!("overview.js"),
    },
    Asset {
        name: "queues.js",
        content_type: JS,
        body: include_str!("queues.js"),
    },
    Asset {
        name: "streams.js",
        content_type: JS,
        body: include_str!("streams.js"),
    },
    Asset {
        name: "exchanges.js",
        content_type: JS,
        body: include_str!("exchanges.js"),
    },
    Asset {
        name: "connections.js",
        content_type: JS,
        body: include_str!("connections.js"),
    },
    Asset {
        name: "nodes.js",
        content_type: JS,
        body: include_str!("nodes.js"),
    },
    Asset {
        name: "admin.js",
        content_type: JS,
        body: include_str!("admin.js"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_str!("app.js"),
    },
];

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /ui/{file}`: a script or style sheet; 404 for anything else.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => serve(asset, &headers),
        None => super::ApiError::not_found().into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = etag_of(asset);
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let common = [
        (header::ETAG, HeaderValue::from_str(etag).ok()),
        (
            header::CACHE_CONTROL,
            Some(HeaderValue::from_static("no-cache")),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            Some(HeaderValue::from_static("nosniff")),
        ),
    ];
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    for (name, value) in common {
        if let Some(value) = value {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A strong ETag per asset, computed once.
fn etag_of(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(ASSETS.iter())
            .map(|a| {
                let digest = Sha256::digest(a.body.as_bytes());
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                (a.name, format!("\"{hex}\""))
            })
            .collect()
    });
    tags.iter()
        .find(|(name, _)| *name == asset.name)
        .map_or("\"0\"", |(_, tag)| tag.as_str())
}

//! The dashboard's files, embedded in the binary (it works offline: no CDN, no Node build).
//! Each is served under `/ui/assets/{version}/{name}`, where the version is a hash of its
//! contents: a changed file gets a new URL, so every URL can be cached for a year.
//!
//! htmx and its SSE extension are vendored unchanged from npm (`htmx.org@2.0.11`,
//! `htmx-ext-sse@2.2.4`, BSD Zero Clause licence; the licence files sit beside them).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

/// One embedded file.
pub struct Asset {
    /// File name in the URL.
    pub name: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The contents.
    pub bytes: &'static [u8],
}

/// Every embedded file.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx-2.0.11.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/htmx-2.0.11.min.js"),
    },
    Asset {
        name: "htmx-ext-sse-2.2.4.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/htmx-ext-sse-2.2.4.min.js"),
    },
    Asset {
        name: "htmx-LICENSE.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("assets/htmx-LICENSE"),
    },
    Asset {
        name: "htmx-ext-sse-LICENSE.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("assets/htmx-ext-sse-LICENSE"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/dashboard.css"),
    },
];

/// FNV-1a over the contents: a version that changes with them (not a security hash).
fn version_of(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{:012x}", hash >> 16)
}

/// Each asset's URL, computed once.
static URLS: LazyLock<Vec<(&'static str, String, String)>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let version = version_of(a.bytes);
            let url = format!("/ui/assets/{version}/{}", a.name);
            (a.name, version, url)
        })
        .collect()
});

/// The URL of the asset `name` (an unknown name gives a URL that answers 404).
pub fn url(name: &str) -> &'static str {
    URLS.iter()
        .find(|(n, _, _)| *n == name)
        .map_or("/ui/assets/missing", |(_, _, url)| url.as_str())
}

/// `GET /ui/assets/{version}/{name}`: the file, cacheable for a year; 404 for an unknown name
/// or an old version.
pub async fn serve(Path((version, name)): Path<(String, String)>) -> Response {
    let found = ASSETS
        .iter()
        .zip(URLS.iter())
        .find(|(a, (_, v, _))| a.name == name && *v == version);
    match found {
        Some((asset, _)) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.bytes,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_stay_small_and_have_distinct_urls() {
        let total: usize = ASSETS.iter().map(|a| a.bytes.len()).sum();
        assert!(total <= 300 * 1024, "assets are {total} bytes");
        assert_ne!(url("dashboard.css"), url("htmx-2.0.11.min.js"));
        assert!(url("dashboard.css").starts_with("/ui/assets/"));
        assert_eq!(url("nope"), "/ui/assets/missing");
    }
}

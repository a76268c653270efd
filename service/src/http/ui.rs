//! The operators' web UI at `/ui`: one HTML page, one script and one style sheet,
//! embedded in the binary at build time (`service/ui/`). The page calls the `/v1` API
//! from the browser with the bearer token the operator types in, so the files
//! themselves are served without a token — they hold no data.
//!
//! Every answer, 404 included, carries a content security policy that allows only
//! this origin's own files (no inline script or style, no third-party anything),
//! `nosniff`, no referrer and no framing. Files are revalidated on each load
//! (`no-cache` with an `ETag`), so a new binary's UI is picked up at once while an
//! unchanged file costs a 304.

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "ui/"]
struct Assets;

/// The page `/ui` and `/ui/` serve.
const INDEX: &str = "index.html";

/// Headers every answer under `/ui` carries.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, "default-src 'self'"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// The routes `/ui`, `/ui/` and `/ui/{*path}` (no state, no token).
pub(crate) fn routes() -> Router {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// The content type of an embedded file, from its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn with_security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// An embedded file (200, or 304 when the client's copy is current), or 404.
fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return with_security_headers(
            (
                StatusCode::NOT_FOUND,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                "not found\n",
            )
                .into_response(),
        );
    };
    let etag = format!(
        "\"{}\"",
        file.metadata.sha256_hash()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let current = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let caching = [(header::CACHE_CONTROL, "no-cache".to_owned()), (header::ETAG, etag)];
    let response = if current {
        (StatusCode::NOT_MODIFIED, caching).into_response()
    } else {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type(path))],
            caching,
            file.data,
        )
            .into_response()
    };
    with_security_headers(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// `GET path` over real HTTP/1.1 to a server on `routes()`: (status, headers with
    /// lower-case names, body).
    async fn fetch(path: &str, if_none_match: Option<&str>) -> (u16, Vec<(String, String)>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, routes()).await });
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
        if let Some(tag) = if_none_match {
            request.push_str(&format!("if-none-match: {tag}\r\n"));
        }
        request.push_str("\r\n");
        let raw = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).unwrap();
            String::from_utf8(raw).unwrap()
        })
        .await
        .unwrap();
        server.abort();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        (status, headers, body.to_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn assert_secured(path: &str, headers: &[(String, String)]) {
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(header(headers, name.as_str()), Some(value), "{path}: {name}");
        }
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_their_types() {
        for (path, ty, needle) in [
            ("/ui", "text/html; charset=utf-8", "<script src=\"/ui/app.js\""),
            (
                "/ui/",
                "text/html; charset=utf-8",
                "<link rel=\"stylesheet\" href=\"/ui/style.css\"",
            ),
            (
                "/ui/index.html",
                "text/html; charset=utf-8",
                "data-testid=\"token-input\"",
            ),
            ("/ui/app.js", "text/javascript; charset=utf-8", "sessionStorage"),
            ("/ui/style.css", "text/css; charset=utf-8", "font-family"),
        ] {
            let (status, headers, body) = fetch(path, None).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(header(&headers, "content-type"), Some(ty), "{path}");
            assert_eq!(header(&headers, "cache-control"), Some("no-cache"), "{path}");
            assert!(header(&headers, "etag").is_some(), "{path}");
            assert!(body.contains(needle), "{path} lacks {needle:?}");
            assert_secured(path, &headers);
        }
    }

    #[tokio::test]
    async fn unknown_files_are_404_and_nothing_escapes_the_folder() {
        for path in [
            "/ui/nope.js",
            "/ui/app.js/x",
            "/ui/../Cargo.toml",
            "/ui/%2e%2e/Cargo.toml",
            "/ui/..%2fCargo.toml",
            "/ui/%2e%2e%2fsrc%2flib.rs",
            "/ui/src/http/ui.rs",
            "/ui/ui.rs",
        ] {
            let (status, headers, body) = fetch(path, None).await;
            assert_eq!(status, 404, "{path}");
            assert_eq!(body, "not found\n", "{path}");
            assert_eq!(header(&headers, "cache-control"), Some("no-store"), "{path}");
            assert_secured(path, &headers);
        }
    }

    #[tokio::test]
    async fn an_unchanged_file_is_a_304() {
        let (_, headers, _) = fetch("/ui/app.js", None).await;
        let etag = header(&headers, "etag").unwrap().to_owned();
        let (status, headers, body) = fetch("/ui/app.js", Some(&etag)).await;
        assert_eq!(status, 304);
        assert!(body.is_empty());
        assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
        assert_secured("/ui/app.js (304)", &headers);
        assert_eq!(fetch("/ui/app.js", Some("\"stale\"")).await.0, 200);
        // Another file's tag does not match it.
        assert_eq!(fetch("/ui/style.css", Some(&etag)).await.0, 200);
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("a/b.svg"), "image/svg+xml");
        assert_eq!(content_type("x.png"), "image/png");
        assert_eq!(content_type("README"), "application/octet-stream");
    }

    /// `name=` attributes in `html` whose name starts with `prefix`.
    fn attributes_starting(html: &str, prefix: &str) -> Vec<String> {
        html.split(|c: char| c.is_whitespace() || c == '<')
            .filter_map(|w| w.split_once('='))
            .map(|(name, _)| name.to_ascii_lowercase())
            .filter(|name| name.starts_with(prefix))
            .collect()
    }

    #[test]
    fn the_files_use_nothing_the_policy_would_block() {
        let text = |path: &str| String::from_utf8(Assets::get(path).unwrap().data.into_owned()).unwrap();
        let html = text(INDEX);
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "inline script or style"
        );
        assert_eq!(attributes_starting(&html, "style"), Vec::<String>::new());
        assert_eq!(
            attributes_starting(&html, "on"),
            Vec::<String>::new(),
            "inline handlers"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "third-party files"
        );
        // Styles go through the CSSOM (allowed), never a style attribute (blocked).
        let js = text("app.js");
        assert!(!js.contains("'style'") && !js.contains("style=\""));
        assert!(!js.contains("eval(") && !js.contains("new Function"));
        assert!(!text("style.css").contains("@import"));
    }
}

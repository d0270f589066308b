//! The coupling map in a browser: a page and its assets, embedded in the
//! binary (`collector/web/`), served on the API port at `/`. It draws the
//! typed pages of [`crate::api`] and asks for them again every few
//! seconds; it loads nothing from anywhere else (the Content-Security-Policy
//! says so to the browser too).

use std::sync::Arc;

use axum::{
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// The page's files: path under `/assets/` (the page itself at `/`), type
/// and bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../web/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../web/icon.svg"),
    ),
    (
        "vendor/d3-dispatch.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/vendor/d3-dispatch.min.js"),
    ),
    (
        "vendor/d3-quadtree.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/vendor/d3-quadtree.min.js"),
    ),
    (
        "vendor/d3-timer.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/vendor/d3-timer.min.js"),
    ),
    (
        "vendor/d3-force.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/vendor/d3-force.min.js"),
    ),
];

/// Only this collector's own files and API: no inline script or style, no
/// other origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The asset at `path`: its type and bytes.
fn find(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, kind, bytes)| (*kind, *bytes))
}

fn file(path: &str) -> Response {
    let Some((kind, bytes)) = find(path) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /`: the page.
pub async fn index() -> Response {
    file("index.html")
}

/// `GET /assets/{path}`.
pub async fn asset(Path(path): Path<String>) -> Response {
    file(&path)
}

/// Why the HTML report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportHtmlError {
    /// An asset would close the script element it is inlined in.
    #[error("the page's {0} cannot be inlined")]
    Inline(&'static str),
    /// The model did not serialise.
    #[error("the model: {0}")]
    Json(#[from] serde_json::Error),
}

fn text(path: &str) -> &'static str {
    find(path)
        .and_then(|(_, b)| std::str::from_utf8(b).ok())
        .unwrap_or_default()
}

/// The page with its styles and scripts inlined and `snapshot` (the four
/// API pages) in it: one file that shows the map and the findings as they
/// were, offline, with no collector behind it.
pub fn report_html(snapshot: &crate::report::Snapshot) -> Result<String, ReportHtmlError> {
    // In a script element, only `</script` ends it: JSON's `<` is escaped.
    let data = serde_json::to_string(snapshot)?.replace('<', "\\u003c");
    let mut html = text("index.html")
        .replace(
            r#"<link rel="icon" href="assets/icon.svg" type="image/svg+xml">"#,
            "",
        )
        .replace(
            r#"<link rel="stylesheet" href="assets/style.css">"#,
            &format!("<style>\n{}</style>", text("style.css")),
        );
    for (path, _, _) in ASSETS.iter().filter(|(p, _, _)| p.ends_with(".js")) {
        let js = text(path);
        let lower = js.to_ascii_lowercase();
        if lower.contains("</script") || lower.contains("<!--") {
            return Err(ReportHtmlError::Inline(path));
        }
        let tag = format!(r#"<script src="assets/{path}"></script>"#);
        let inline = if *path == "app.js" {
            format!(
                "<script type=\"application/json\" id=\"snapshot\">{data}</script>\n<script>\n{js}</script>"
            )
        } else {
            format!("<script>\n{js}</script>")
        };
        html = html.replace(&tag, &inline);
    }
    Ok(html)
}

/// Who may read the map and the API: anyone, or with a token configured,
/// those who give it as a bearer token or as a Basic password.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<Arc<str>>,
}

impl Access {
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(Into::into),
        }
    }

    /// Whether a request with these headers may read.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let secret = if let Some(t) = given.strip_prefix("Bearer ") {
            t.as_bytes().to_vec()
        } else if let Some(b) = given.strip_prefix("Basic ") {
            use base64::Engine as _;
            let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
                return false;
            };
            // user:password; the user name is not checked.
            match pair.iter().position(|&c| c == b':') {
                Some(at) => pair.get(at + 1..).unwrap_or_default().to_vec(),
                None => return false,
            }
        } else {
            return false;
        };
        same(&secret, token.as_bytes())
    }

    /// The answer to a request without the token: the browser asks for it.
    pub fn refusal() -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tangle\", charset=\"UTF-8\""),
            )],
            "the token is needed (as a bearer token, or as the password)\n",
        )
            .into_response()
    }
}

/// Equal, in the same time whatever the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn the_token_as_bearer_or_as_basic_password() {
        assert!(Access::new(None).allows(&HeaderMap::new()));
        let a = Access::new(Some("s3cret".into()));
        assert!(!a.allows(&HeaderMap::new()));
        assert!(a.allows(&with("Bearer s3cret")));
        // "anyone:s3cret", "x:s3cre", "s3cret" (no colon).
        assert!(a.allows(&with("Basic YW55b25lOnMzY3JldA==")));
        assert!(!a.allows(&with("Basic eDpzM2NyZQ==")));
        assert!(!a.allows(&with("Basic czNjcmV0")));
        for bad in ["Bearer s3creT", "bearer s3cret", "s3cret", "Basic !!!"] {
            assert!(!a.allows(&with(bad)), "{bad}");
        }
    }

    #[test]
    fn every_asset_is_served_with_its_policy() {
        for (path, kind, _) in ASSETS {
            let r = file(path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], *kind);
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}

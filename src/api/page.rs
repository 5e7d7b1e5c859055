//! The maintenance page at `/`: one self-contained HTML file compiled into the binary (no CDN,
//! no fonts, nothing fetched from outside the box), which reads the same `/api/v1` endpoints as
//! the CLI with the token the technician pastes.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("page.html");

/// The page carries no data, so it is served without a token; everything it shows comes from
/// authenticated API calls. The policy forbids loading anything from elsewhere and framing.
pub(super) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
}

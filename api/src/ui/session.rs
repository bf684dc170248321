//! Sign-in, sessions and the sign-in rate limit.
//!
//! `POST /ui/login` compares the form's `api_key` with the API key in constant time and, when it
//! matches, stores a session: a random 256-bit token goes to the browser in an HttpOnly,
//! SameSite=Strict cookie, and the store keeps only its SHA-256 hash, the session's CSRF token
//! and its expiry. Any API replica on the same store accepts the cookie. Failed sign-ins are
//! limited per client address, in a bounded table.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use super::csrf::Posted;
use super::layout;
use crate::state::AppState;

/// The cookie's name over plain HTTP.
pub const COOKIE_NAME: &str = "bgagent_session";
/// The cookie's name when it is `Secure`: the `__Host-` prefix makes the browser refuse it
/// unless it is Secure, host-only and for path `/`, so a sibling domain cannot plant one.
pub const SECURE_COOKIE_NAME: &str = "__Host-bgagent_session";

/// Failed sign-ins allowed per client address within [`LIMIT_WINDOW`].
pub const LOGIN_ATTEMPTS: u32 = 5;
/// The window of [`LOGIN_ATTEMPTS`].
pub const LIMIT_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked at most: the table's memory is bounded however many addresses an
/// attacker uses. When it is full of live entries, new addresses are refused until one expires.
pub const TRACKED_ADDRESSES: usize = 10_000;
/// Expired sessions deleted at each sign-in.
const PRUNE_BATCH: i64 = 100;

/// The signed-in session of a request, put in its extensions by [`require_session`].
#[derive(Clone, Debug)]
pub struct Session {
    /// The SHA-256 hash of the cookie's token (the store's key).
    pub token_hash: [u8; 32],
    /// The token every form of this session must post.
    pub csrf: String,
}

/// Random bytes as lowercase hex.
fn random_hex() -> String {
    hex(&rand::random::<[u8; 32]>())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn cookie_name(state: &AppState) -> &'static str {
    if state.ui.secure_cookie {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}

/// The session token in the request's cookies, if any.
fn token_from(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(state);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        // Our tokens are 64 hex digits; anything else is not looked up.
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The request's unexpired session, looked up in the store.
async fn session_of(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let token = token_from(state, headers)?;
    let token_hash = hash_token(&token);
    match state.store.session(&token_hash).await {
        Ok(Some(stored)) => Some(Session {
            token_hash,
            csrf: stored.csrf,
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "dashboard session lookup failed");
            None
        }
    }
}

/// Whether the request carries a valid dashboard session cookie: for routes (such as
/// `GET /events`) that accept either `x-api-key` or the dashboard's session.
pub async fn authenticated(state: &AppState, headers: &HeaderMap) -> bool {
    session_of(state, headers).await.is_some()
}

/// Let requests with a session through (with the [`Session`] in their extensions); send the
/// others to the sign-in page. An htmx request (a live fragment whose session ended) gets 401
/// with `HX-Redirect`, so the whole page goes to the sign-in page instead of a fragment.
pub async fn require_session(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    match session_of(&state, req.headers()).await {
        Some(session) => {
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        None if req.headers().contains_key("hx-request") => {
            (StatusCode::UNAUTHORIZED, [("hx-redirect", "/ui/login")]).into_response()
        }
        None => Redirect::to("/ui/login").into_response(),
    }
}

/// `GET /ui/login`: the sign-in form (or the overview when already signed in).
pub async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if authenticated(&state, &headers).await {
        return Redirect::to("/ui").into_response();
    }
    layout::login_page(None).into_response()
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    api_key: String,
}

/// `POST /ui/login`: check the key, open a session, set the cookie, go to the overview.
pub async fn login(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    if cross_site(&headers) {
        return (
            StatusCode::FORBIDDEN,
            layout::login_page(Some(
                "Sign-in refused: the form was posted from another site.",
            )),
        )
            .into_response();
    }
    // The peer address the server put in; absent when the router is called without a socket.
    let client = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    if let Some(wait) = state.ui.limiter.blocked(client) {
        let secs = wait.as_secs().max(1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            layout::login_page(Some(&format!(
                "Too many failed sign-ins. Try again in {secs} seconds."
            ))),
        )
            .into_response();
    }
    let expected = state.api_key.expose_secret().as_bytes();
    if !bool::from(form.api_key.trim().as_bytes().ct_eq(expected)) {
        state.ui.limiter.failed(client);
        tracing::warn!(client = %client, "dashboard sign-in with a wrong key");
        return (
            StatusCode::UNAUTHORIZED,
            layout::login_page(Some("That is not the API key.")),
        )
            .into_response();
    }
    state.ui.limiter.succeeded(client);
    // Opportunistic clean-up: a few expired sessions per sign-in keep the table small.
    if let Err(e) = state.store.prune_sessions(PRUNE_BATCH).await {
        tracing::debug!(error = %e, "expired dashboard sessions not pruned");
    }
    let token = random_hex();
    let csrf = random_hex();
    if let Err(e) = state
        .store
        .insert_session(&hash_token(&token), &csrf, state.ui.session_ttl)
        .await
    {
        return super::UiError::from(e).into_response();
    }
    tracing::info!(client = %client, "dashboard session opened");
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        cookie_name(&state),
        state.ui.session_ttl.as_secs(),
        if state.ui.secure_cookie {
            "; Secure"
        } else {
            ""
        }
    );
    see_other_with_cookie("/ui", &cookie)
}

/// The sign-out form: only its CSRF token.
#[derive(Deserialize)]
pub struct LogoutForm {}

/// `POST /ui/logout`: delete the session and its cookie.
pub async fn logout(State(state): State<AppState>, posted: Posted<LogoutForm>) -> Response {
    if let Err(e) = state.store.delete_session(&posted.session.token_hash).await {
        return super::UiError::from(e).into_response();
    }
    let cookie = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        cookie_name(&state),
        if state.ui.secure_cookie {
            "; Secure"
        } else {
            ""
        }
    );
    see_other_with_cookie("/ui/login", &cookie)
}

fn see_other_with_cookie(to: &'static str, cookie: &str) -> Response {
    let mut response = Redirect::to(to).into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    response
}

/// Whether the browser says the sign-in form was posted from another site. `Sec-Fetch-Site`
/// decides when present (same-origin, or none: typed by the user, pass); browsers without it are
/// judged by an `Origin` whose host is not the `Host` the request came to. An opaque `Origin:
/// null` decides nothing: the dashboard's own `Referrer-Policy: no-referrer` makes browsers send
/// it with same-origin form posts. Clients that send neither (curl) pass: the check only stops a
/// page elsewhere from signing a visitor in with a key of its choosing.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    if origin.as_bytes() == b"null" {
        return false;
    }
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        _ => true,
    }
}

/// Failed sign-ins per client address (IPv6 by /64, which one client usually holds whole).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl LoginLimiter {
    /// How long `ip` must wait before its next sign-in, if it is blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut table = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = bucket(ip);
        match table.get(&key) {
            Some(&(since, count)) if now.duration_since(since) < LIMIT_WINDOW => {
                (count >= LOGIN_ATTEMPTS).then(|| LIMIT_WINDOW - now.duration_since(since))
            }
            Some(_) => {
                table.remove(&key);
                None
            }
            None if table.len() >= TRACKED_ADDRESSES => {
                table.retain(|_, (since, _)| now.duration_since(*since) < LIMIT_WINDOW);
                // Still full of live entries: an attack from many addresses. Refuse newcomers
                // until entries expire rather than grow.
                (table.len() >= TRACKED_ADDRESSES).then_some(LIMIT_WINDOW)
            }
            None => None,
        }
    }

    /// Count a failed sign-in of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut table = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= TRACKED_ADDRESSES {
            table.retain(|_, (since, _)| now.duration_since(*since) < LIMIT_WINDOW);
            if table.len() >= TRACKED_ADDRESSES {
                return;
            }
        }
        let entry = table.entry(bucket(ip)).or_insert((now, 0));
        if now.duration_since(entry.0) >= LIMIT_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// Forget the failures of `ip` after it signed in.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut table = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        table.remove(&bucket(ip));
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_block_an_address_for_the_window() {
        let limiter = LoginLimiter::default();
        let ip = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(limiter.blocked(ip).is_none());
            limiter.failed(ip);
        }
        let wait = limiter.blocked(ip).unwrap_or_default();
        assert!(wait > Duration::ZERO && wait <= LIMIT_WINDOW);
        assert!(limiter.blocked(IpAddr::from([10, 0, 0, 2])).is_none());
        limiter.succeeded(ip);
        assert!(limiter.blocked(ip).is_none());
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        let limiter = LoginLimiter::default();
        for i in 0..LOGIN_ATTEMPTS {
            let ip: IpAddr = format!("2001:db8::{i:x}")
                .parse()
                .unwrap_or(IpAddr::from([0; 4]));
            limiter.failed(ip);
        }
        let other: IpAddr = "2001:db8::ffff".parse().unwrap_or(IpAddr::from([0; 4]));
        assert!(limiter.blocked(other).is_some());
    }

    #[test]
    fn the_table_stays_bounded() {
        let limiter = LoginLimiter::default();
        for i in 0..(TRACKED_ADDRESSES as u32 + 50) {
            limiter.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(limiter.tracked(), TRACKED_ADDRESSES);
        assert!(
            limiter
                .blocked(IpAddr::from([255, 255, 255, 255]))
                .is_some()
        );
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!cross_site(&headers(&[])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        // What Chromium sends for the dashboard's own form (Referrer-Policy: no-referrer).
        assert!(!cross_site(&headers(&[
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
            ("host", "a")
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
            ("host", "a")
        ])));
        assert!(!cross_site(&headers(&[("origin", "null"), ("host", "a")])));
    }

    #[test]
    fn tokens_are_256_bit_hex_and_only_such_cookies_are_read() {
        let t = random_hex();
        assert_eq!(t.len(), 64);
        assert_ne!(t, random_hex());
        assert_eq!(hex(&[0, 255]), "00ff");
    }
}

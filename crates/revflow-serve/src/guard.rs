//! Who may talk to the server. A page on another site can make the browser send requests to
//! 127.0.0.1 (DNS rebinding: evil.example resolves to 127.0.0.1 after the page loaded, and
//! the browser sends `Host: evil.example`), so every request must name this server in its
//! `Host` and, where the browser says where it comes from, in its `Origin`. A server reachable
//! from other machines also asks every API request for the token printed at its start.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The names this server answers to and its token.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Host names (without port) a loopback server answers to.
    names: Vec<String>,
    token: Option<String>,
}

/// The header that carries the token (the page adds it to every API request).
pub const TOKEN_HEADER: &str = "x-revflow-token";

/// The name of a `Host` or `Origin` authority without its port: `[::1]:8000` → `[::1]`,
/// `localhost:8000` → `localhost` (the port does not matter against rebinding, and a tunnel
/// or port 80 changes it).
fn name_of(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i + 1..].contains(']') => &authority[..i],
        _ => authority,
    }
}

impl Guard {
    /// A loopback server (`token: None`) answers to the loopback names only; a server
    /// reachable from other machines answers to any name but needs the token.
    pub fn new(token: Option<String>) -> Guard {
        let names = ["127.0.0.1", "localhost", "[::1]"]
            .map(String::from)
            .to_vec();
        Guard { names, token }
    }

    fn check(&self, request: &Request) -> Result<(), ApiError> {
        let headers = request.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let forbidden = |m: String| Err(ApiError::new(StatusCode::FORBIDDEN, m));
        let Some(host) = text(header::HOST.as_str()) else {
            return forbidden("the request has no Host header".into());
        };
        let loopback = |authority: &str| {
            let name = name_of(authority);
            self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
        };
        // Without a token, only loopback names: a rebound name (evil.example) is refused.
        if self.token.is_none() && !loopback(host) {
            return forbidden(format!(
                "Host {host:?} is not this server's; open it as http://127.0.0.1:PORT/"
            ));
        }
        // A browser's request from another page: refused, whatever it may not read anyway.
        if let Some(origin) = text(header::ORIGIN.as_str()) {
            let from = origin.strip_prefix("http://").unwrap_or(origin);
            let own = match self.token {
                None => loopback(from),
                Some(_) => from.eq_ignore_ascii_case(host),
            };
            if !own {
                return forbidden(format!(
                    "requests from {origin} are refused: only this server's own page may call it"
                ));
            }
        }
        let api = request.uri().path().starts_with("/api/");
        // Images and scripts of other sites carry no Origin, but the browser says where
        // they come from: they may not make the server work.
        if api && matches!(text("sec-fetch-site"), Some("cross-site" | "same-site")) {
            return forbidden("requests from other sites are refused".into());
        }
        if let (Some(token), true) = (&self.token, api) {
            // A page's EventSource cannot send headers: it gives the token in the query.
            let in_query = (request.uri().query().unwrap_or_default().split('&'))
                .any(|pair| pair.strip_prefix("token=") == Some(token.as_str()));
            if text(TOKEN_HEADER) != Some(token.as_str()) && !in_query {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this server needs its token: open the address it printed at start \
                     (…/?token=…)",
                ));
            }
        }
        Ok(())
    }
}

/// The middleware: refuses a request the guard does not pass.
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(&request) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// A fresh random token (128 bits, hex) from the system's generator.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

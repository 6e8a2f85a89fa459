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
    /// `host:port` values a request's Host header may hold.
    hosts: Vec<String>,
    token: Option<String>,
}

/// The header that carries the token (the page adds it to every API request).
pub const TOKEN_HEADER: &str = "x-revflow-token";

impl Guard {
    /// For a server bound to `host` on `port`: the loopback names always, `host` itself when
    /// it is another address.
    pub fn new(host: &str, port: u16, token: Option<String>) -> Guard {
        let mut hosts: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .map(|h| format!("{h}:{port}"))
            .collect();
        let named = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if !hosts.contains(&named) {
            hosts.push(named);
        }
        Guard { hosts, token }
    }

    fn check(&self, request: &Request) -> Result<(), ApiError> {
        let headers = request.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let forbidden = |m: String| Err(ApiError::new(StatusCode::FORBIDDEN, m));
        match text(header::HOST.as_str()) {
            Some(host) if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) => {}
            Some(host) => {
                return forbidden(format!(
                    "Host {host:?} is not this server's; open it as http://{}/",
                    self.hosts[0]
                ))
            }
            None => return forbidden("the request has no Host header".into()),
        }
        if let Some(origin) = text(header::ORIGIN.as_str()) {
            let own = origin
                .strip_prefix("http://")
                .is_some_and(|o| self.hosts.iter().any(|h| h.eq_ignore_ascii_case(o)));
            if !own {
                return forbidden(format!(
                    "requests from {origin} are refused: only this server's own page may call it"
                ));
            }
        }
        if let (Some(token), true) = (&self.token, request.uri().path().starts_with("/api/")) {
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

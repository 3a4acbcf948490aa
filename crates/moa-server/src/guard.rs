//! Who may talk to the server, checked before a request's body is read: the API key, the
//! `Host` a request names (against DNS rebinding), a browser's `Origin` (against cross-site
//! requests to a keyless server on this machine) and the body's content type.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The names a request's `Host` may carry, and the origins a browser may send from.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    /// Host names (or IP literals) accepted besides the loopback names and the bound address;
    /// `*` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://app.example.com`) accepted besides those on an accepted host.
    pub allowed_origins: Vec<String>,
    /// The address the server listens on, when known.
    pub bound: Option<SocketAddr>,
}

/// The host part of a `Host` header value or of an origin's authority, lowercased, without
/// the port and without IPv6 brackets.
fn host_part(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
        _ => authority,
    }
}

impl Hosts {
    /// Whether `host` (a host name without port) may be named in `Host`.
    fn host_allowed(&self, host: &str) -> bool {
        if matches!(host, "localhost" | "127.0.0.1" | "::1") {
            return true;
        }
        if self
            .allowed_hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(host))
        {
            return true;
        }
        match self.bound.map(|a| a.ip()) {
            // Listening on every address: the names it is reached by cannot be known, so any
            // is accepted unless --allowed-hosts lists them.
            Some(ip) if ip.is_unspecified() => self.allowed_hosts.is_empty(),
            Some(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == ip),
            None => false,
        }
    }

    /// Checks `Host` and `Origin`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(host_part)
            .unwrap_or_default();
        if !self.host_allowed(&host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "host_not_allowed",
                format!(
                    "requests for host `{host}` are not served here; the server's operator can \
                     allow it with --allowed-hosts"
                ),
            ));
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or_default().trim();
        let on_allowed_host = origin.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https") && self.host_allowed(&host_part(rest))
        });
        if on_allowed_host
            || self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "origin_not_allowed",
            format!(
                "requests from web pages at `{origin}` are not accepted; the server's operator \
                 can allow it with --allowed-origins"
            ),
        ))
    }
}

/// Checks the bearer token against `key` in constant time.
pub fn authorize(key: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "missing or wrong API key: send Authorization: Bearer <the server's key>",
        ))
    }
}

/// A POST body must be declared JSON: a browser cannot send that cross-site without a
/// preflight, so a plain HTML form or `fetch` in no-cors mode cannot drive the server.
pub fn json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = kind.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "unsupported_media_type",
        format!(
            "the body must be sent with Content-Type: application/json (got `{}`)",
            if kind.is_empty() { "none" } else { kind }
        ),
    ))
}

/// A client's `X-Request-Id`, if it is one we can pass on: 1 to 128 characters of letters,
/// digits and `-_.:`. Anything else is replaced by one of ours.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("x-request-id")?.to_str().ok()?.trim();
    let fits = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    fits.then(|| value.to_string())
}

/// CORS headers for an allowed `origin`; a preflight's answer also says what may be sent.
pub fn cors(headers: &mut HeaderMap, origin: header::HeaderValue, preflight: bool) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, header::HeaderValue::from_static("origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::HeaderValue::from_static("x-request-id"),
    );
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static("authorization, content-type, x-request-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            header::HeaderValue::from_static("600"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn hosts_and_origins_on_a_loopback_bind() {
        let hosts = Hosts {
            bound: Some("127.0.0.1:8787".parse().unwrap()),
            ..Hosts::default()
        };
        for ok in [
            "localhost:8787",
            "127.0.0.1:8787",
            "[::1]:8787",
            "LOCALHOST",
        ] {
            let h = HeaderMap::from_iter([(header::HOST, HeaderValue::from_static(ok))]);
            assert!(hosts.check(&h).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:8787",
            "evil.example",
            "127.0.0.1.evil.example",
            "",
        ] {
            let h = HeaderMap::from_iter([(header::HOST, HeaderValue::from_static(bad))]);
            assert_eq!(hosts.check(&h).unwrap_err().status, 403, "{bad}");
        }
        let same = headers(&[
            ("host", "localhost:8787"),
            ("origin", "http://localhost:8787"),
        ]);
        assert!(hosts.check(&same).is_ok());
        let foreign = headers(&[
            ("host", "localhost:8787"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            hosts.check(&foreign).unwrap_err().code,
            "origin_not_allowed"
        );
        let null = headers(&[("host", "localhost:8787"), ("origin", "null")]);
        assert!(hosts.check(&null).is_err());
        let allowed = Hosts {
            allowed_origins: vec!["https://app.example".into()],
            allowed_hosts: vec!["moa.internal".into()],
            ..hosts
        };
        let h = headers(&[("host", "moa.internal"), ("origin", "https://app.example")]);
        assert!(allowed.check(&h).is_ok());
    }

    #[test]
    fn an_unspecified_bind_takes_any_host_unless_told() {
        let mut hosts = Hosts {
            bound: Some("0.0.0.0:8787".parse().unwrap()),
            ..Hosts::default()
        };
        assert!(hosts.check(&headers(&[("host", "10.0.0.5:8787")])).is_ok());
        hosts.allowed_hosts = vec!["moa.example".into()];
        assert!(hosts.check(&headers(&[("host", "10.0.0.5:8787")])).is_err());
        assert!(hosts.check(&headers(&[("host", "moa.example")])).is_ok());
    }

    #[test]
    fn keys_and_content_types() {
        let ok = headers(&[("authorization", "Bearer sk-1")]);
        assert!(authorize(Some("sk-1"), &ok).is_ok());
        assert!(authorize(Some("sk-2"), &ok).is_err());
        assert!(authorize(Some("sk-1"), &HeaderMap::new()).is_err());
        assert!(authorize(None, &HeaderMap::new()).is_ok());
        assert!(json_body(&headers(&[(
            "content-type",
            "application/json; charset=utf-8"
        )]))
        .is_ok());
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let h = HeaderMap::from_iter([(header::CONTENT_TYPE, HeaderValue::from_static(bad))]);
            assert_eq!(json_body(&h).unwrap_err().status, 415);
        }
        assert_eq!(json_body(&HeaderMap::new()).unwrap_err().status, 415);
    }
}

//! The `Origin` check: which browser pages may open a WebSocket here.

/// Whether an upgrade with these `Origin` and `Host` headers may proceed.
///
/// Cross-site WebSocket hijacking: a page on another site can open a WebSocket to this server
/// with the user's cookies, and the browser sends its own `Origin`. So a request with an
/// `Origin` is accepted only when the origin's host matches `Host`, or the origin (or its host)
/// is in `allow` (`*` turns the check off). Requests without `Origin` come from non-browser
/// clients, which can set any header anyway: accepted.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allow: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allow.iter().any(|a| a == "*") {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    let listed = allow
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin) || a.eq_ignore_ascii_case(origin_host));
    listed || host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host) && origin != "null")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(None, Some("a.example"), &none));
        assert!(origin_allowed(
            Some("http://127.0.0.1:9001"),
            Some("127.0.0.1:9001"),
            &none
        ));
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("127.0.0.1:9001"),
            &none
        ));
        assert!(!origin_allowed(
            Some("http://localhost:9001"),
            Some("127.0.0.1:9001"),
            &none
        ));
        assert!(!origin_allowed(Some("null"), Some("null"), &none));
        let allow = vec!["https://app.example".to_owned(), "other.example".to_owned()];
        assert!(origin_allowed(
            Some("https://app.example"),
            Some("api"),
            &allow
        ));
        assert!(origin_allowed(
            Some("http://other.example"),
            Some("api"),
            &allow
        ));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("api"),
            &allow
        ));
        assert!(origin_allowed(
            Some("https://evil.example"),
            Some("api"),
            &["*".to_owned()]
        ));
    }
}

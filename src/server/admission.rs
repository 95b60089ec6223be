//! Admission decisions that do not depend on the reactor's state: the `Origin` check and the
//! jittered `Retry-After` that spreads a reconnecting fleet out.

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

/// A small xorshift generator for jitter: not for anything secret.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and the process id, so restarted servers jitter differently.
    pub fn new() -> Jitter {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// A `Retry-After` value in whole seconds, uniform in `base..=2*base` (at least 1), so
    /// clients told to come back do not all come back in the same second.
    pub fn retry_after(&mut self, base_secs: u64) -> u64 {
        let base = base_secs.max(1);
        base + self.next() % (base + 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::new()
    }
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

    #[test]
    fn retry_after_is_spread() {
        let mut j = Jitter::new();
        let values: std::collections::HashSet<u64> = (0..200).map(|_| j.retry_after(5)).collect();
        assert!(values.iter().all(|v| (5..=10).contains(v)));
        assert!(values.len() >= 4, "{values:?}");
    }
}

//! Stand-in for the Redis bridge in builds without the `redis` feature: the same name, but it
//! never starts, so [`crate::Workers`] keeps one code path and a `--redis` (or a
//! [`RedisConfig`] given to it) fails at start-up with a clear error.

use std::io;
use std::sync::{Arc, Weak};

use super::{BrokerStats, Delivery, Hub, Upstream};
use crate::config::RedisConfig;

/// The Redis bridge; uninhabited without the `redis` feature.
#[derive(Debug)]
pub(crate) enum RedisBridge {}

impl RedisBridge {
    /// Always fails: this build has no Redis client.
    pub(crate) fn start(
        _config: &RedisConfig,
        _hub: Weak<Hub>,
        _stats: Arc<BrokerStats>,
    ) -> io::Result<RedisBridge> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "Redis: this wsloop was built without the `redis` feature",
        ))
    }
}

impl Upstream for RedisBridge {
    fn publish(&self, _delivery: &Delivery) {
        match *self {}
    }

    fn interest(&self, _topic: &str, _subscribed: bool) {
        match *self {}
    }

    fn subscribed(&self, _topic: &str) -> bool {
        match *self {}
    }

    fn origin(&self) -> u64 {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_says_the_feature_is_missing() {
        let config = RedisConfig::new("redis://127.0.0.1:6379");
        let error = RedisBridge::start(&config, Weak::new(), Arc::default()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Unsupported);
        assert!(error.to_string().contains("`redis` feature"), "{error}");
    }
}

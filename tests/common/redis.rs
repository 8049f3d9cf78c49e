//! Redis for tests: the shared server (`NEXUS_TEST_REDIS`, else
//! 127.0.0.1:6379) with a key and channel prefix of the test's own, whose
//! keys are deleted when the test ends.

pub fn redis_url() -> String {
    std::env::var("NEXUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    pub fn new() -> TestRedis {
        TestRedis {
            url: redis_url(),
            prefix: format!("nexus_t_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The server settings that point a `nexus` at this Redis and prefix.
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("REDIS_URL", self.url.as_str()),
            ("NEXUS_REDIS_PREFIX", self.prefix.as_str()),
        ]
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to Redis")
    }

    /// Every key under the test's prefix.
    pub fn keys(&self) -> Vec<String> {
        let mut c = self.connection();
        let found: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}:*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut c)
            .expect("SCAN");
        found.filter_map(Result::ok).collect()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let keys = self.keys();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(&keys).query(&mut self.connection());
        }
    }
}

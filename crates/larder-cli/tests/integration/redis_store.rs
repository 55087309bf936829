//! The demo on a real redis-server: apply prepares the tables, materialize writes with
//! server-side expiry, serve reads; a down Redis gives a 503 naming the backend and the
//! server recovers by itself when Redis comes back.

use std::time::{Duration, Instant};

use larder_testing::RedisServer;
use serde_json::json;

use crate::util::{DemoRepo, Server, error_detail, error_message, larder, larder_ok};

fn use_redis(repo: &DemoRepo, server: &RedisServer) {
    repo.use_online_store(&format!(
        "  type: redis\n  urls: [\"{}\"]\n  key_prefix: \"demo:\"\n  response_timeout_ms: 500\n  connection_timeout_ms: 500\n",
        server.url()
    ));
}

#[test]
fn demo_serves_from_redis_and_survives_a_redis_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let repo = DemoRepo::init(200);
    use_redis(&repo, &redis);
    let applied = larder_ok(&repo.path, &["apply"]);
    assert!(
        applied.contains("Prepared 2 online tables in the redis store"),
        "{applied}"
    );
    larder_ok(&repo.path, &["materialize"]);
    // 200 users in each of the two views, one key per (view version, user).
    assert_eq!(redis.cli(&["dbsize"]).trim(), "400");
    // Server-side expiry follows the view's TTL (user_activity: 7 days).
    // (Keys hold binary entity bytes, so the TTL is read inside the server.)
    let ttl_of_one_key_of = |pattern: &str| -> i64 {
        let script = "local keys = redis.call('SCAN', 0, 'MATCH', ARGV[1], 'COUNT', 1000)[2]; return redis.call('TTL', keys[1])";
        redis
            .cli(&["eval", script, "0", pattern])
            .trim()
            .parse()
            .unwrap()
    };
    let activity_ttl = ttl_of_one_key_of("demo:user_activity@1:*");
    assert!(
        activity_ttl > 0 && activity_ttl <= 7 * 86_400,
        "ttl of an activity row: {activity_ttl}"
    );

    let server = Server::start(&repo.path);
    let body = json!({"features": ["user_profile:age", "user_activity:clicks_7d"], "entities": {"user_id": [1, 2, 100000]}}).to_string();
    let (status, response) = server.post("/get-online-features", &body);
    assert_eq!(status, 200, "{response}");
    let statuses = &response["results"][1]["statuses"];
    assert_eq!(statuses[0], "PRESENT", "{response}");
    assert_eq!(statuses[2], "NOT_FOUND", "{response}");
    let age_of_user_1 = response["results"][1]["values"][0].clone();

    redis.kill();
    let (status, response) = server.post("/get-online-features", &body);
    assert_eq!(status, 503, "{response}");
    assert_eq!(error_detail(&response)["code"], "UNAVAILABLE", "{response}");
    let message = error_message(&response);
    assert!(message.contains("'redis'"), "{response}");
    // With Redis down, materialize must fail, never report success.
    let output = larder(&repo.path, &["materialize"]);
    assert!(
        !output.status.success(),
        "materialize succeeded with redis down"
    );

    redis.restart();
    // The restarted Redis kept nothing (no persistence) while the change-detection digests
    // (a local file) remember every row: a full refresh rewrites them.
    larder_ok(&repo.path, &["materialize", "--full-refresh"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, response) = server.post("/get-online-features", &body);
        if status == 200 {
            assert_eq!(
                response["results"][1]["values"][0], age_of_user_1,
                "{response}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not reconnect to redis: {status} {response}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

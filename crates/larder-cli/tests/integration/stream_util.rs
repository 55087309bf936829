//! What the streaming end-to-end tests share: click events counted and summed per user.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::Server;

/// (`count_7d`, `amount_sum_7d`) of `user_clicks` for users `0..users`, as served.
pub fn served(server: &Server, users: i64) -> Vec<(i64, f64)> {
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["user_clicks:count_7d", "user_clicks:amount_sum_7d"],
                "entities": {"user_id": (0..users).collect::<Vec<_>>()}})
        .to_string(),
    );
    assert_eq!(status, 200, "{response}");
    let counts = response["results"][1]["values"].as_array().unwrap();
    let sums = response["results"][2]["values"].as_array().unwrap();
    counts
        .iter()
        .zip(sums)
        .map(|(count, sum)| (count.as_i64().unwrap_or(0), sum.as_f64().unwrap_or(0.0)))
        .collect()
}

/// What events `0..total` (user = index % users, amount = index % 7) add up to per user.
pub fn expected(total: i64, users: i64) -> Vec<(i64, f64)> {
    (0..users)
        .map(|user| {
            let indices = (0..total).filter(|index| index % users == user);
            let count = indices.clone().count() as i64;
            let sum = indices.map(|index| (index % 7) as f64).sum();
            (count, sum)
        })
        .collect()
}

/// Waits until the server serves `want`; returns how long that took.
pub fn wait_for(server: &Server, want: &[(i64, f64)], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = served(server, want.len() as i64);
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "served values did not converge within {within:?}:\n got {got:?}\nwant {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

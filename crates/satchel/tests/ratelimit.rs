//! Per-network rate limits on unauthenticated endpoints: 429 with Retry-After, and other
//! networks unaffected. (In-memory per instance, so one backend is enough.)

#![allow(clippy::unwrap_used)]

use satchel::testing::TestApp;
use serde_json::json;

async fn sign_in(t: &TestApp, from: &str) -> reqwest::Response {
    t.client
        .post(t.url("/api/v1/library/login"))
        .header("x-forwarded-for", from)
        .json(&json!({"email": "someone@example.com"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_network_is_limited_and_told_when_to_retry_others_are_not() {
    let t = TestApp::start_demo_with(satchel::db::Backend::Sqlite, |c| {
        c.server.rate_limits = true;
        c.server.trust_forwarded_for = true;
    })
    .await;
    for _ in 0..10 {
        assert_eq!(sign_in(&t, "203.0.113.5").await.status(), 202);
    }
    let r = sign_in(&t, "203.0.113.99").await;
    assert_eq!(r.status(), 429, "the same /24 shares the bucket");
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "{wait}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        sign_in(&t, "198.51.100.7").await.status(),
        202,
        "another network is unaffected"
    );
    assert_eq!(sign_in(&t, "2001:db8:1:2::1").await.status(), 202);

    // Key guessing hits the licenses limit; the public catalog is not limited.
    let mut statuses = Vec::new();
    for _ in 0..70 {
        let r = t
            .client
            .post(t.url("/api/v1/licenses/NOT-A-KEY/validate"))
            .header("x-forwarded-for", "192.0.2.1")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        statuses.iter().position(|s| *s == 429).unwrap()
    );
    for _ in 0..100 {
        assert_eq!(
            t.client
                .get(t.url("/api/v1/products"))
                .header("x-forwarded-for", "192.0.2.1")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

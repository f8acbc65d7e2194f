//! The buyer's own actions from the library, on SQLite and PostgreSQL: deactivating a device
//! (through the licensing code, freeing the seat), cancelling and resuming a subscription in
//! test mode (the same state change Stripe's answer makes), with CSRF, other buyers' objects
//! (404) and ended subscriptions (409) refused and nothing changed.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

async fn post(t: &TestApp, path: &str, session: &(String, String), csrf: Option<&str>) -> (u16, Value) {
    let mut req = t.client.post(t.url(path)).header("cookie", &session.0);
    if let Some(c) = csrf {
        req = req.header("x-csrf-token", c);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn activate(t: &TestApp, key: &str, fp: &str) -> String {
    let (s, v) = t
        .post_json(
            &format!("/api/v1/licenses/{key}/activate"),
            &json!({"device_fingerprint": fp, "label": fp}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["activation_id"].as_str().unwrap().to_string()
}

async fn seats(t: &TestApp, key: &str) -> i64 {
    t.app
        .db
        .fetch_i64(sql!("SELECT activations FROM license_keys WHERE license_key = $1", key))
        .await
        .unwrap()
}

#[tokio::test]
async fn buyers_deactivate_their_own_devices_only() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let mine = t.buy_paid("demo-app", "me@example.com").await;
        let theirs = t.buy_paid("demo-app", "them@example.com").await;
        let single = t.buy_paid("demo-single", "me@example.com").await;
        let key = mine["items"][0]["license_key"].as_str().unwrap().to_string();
        let their_key = theirs["items"][0]["license_key"].as_str().unwrap().to_string();
        let single_key = single["items"][0]["license_key"].as_str().unwrap().to_string();
        let a1 = activate(&t, &key, "device-one-0001").await;
        let a2 = activate(&t, &key, "device-two-0002").await;
        activate(&t, &key, "device-three-003").await;
        let theirs_a = activate(&t, &their_key, "their-device-01").await;
        let single_a = activate(&t, &single_key, "single-device-1").await;
        assert_eq!(seats(&t, &key).await, 3);
        // All seats taken: a fourth device is refused.
        let (s, _) = t
            .post_json(
                &format!("/api/v1/licenses/{key}/activate"),
                &json!({"device_fingerprint": "device-four-0004"}),
            )
            .await;
        assert_eq!(s, 409, "{backend:?}");

        let me = t.library_session("me@example.com").await;
        let lib: Value = t
            .client
            .get(t.url("/api/v1/library"))
            .header("cookie", &me.0)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lic = lib["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["licenses"].as_array().unwrap().clone())
            .find(|l| l["key"] == key.as_str())
            .unwrap();
        assert_eq!(lic["devices"].as_array().unwrap().len(), 3);
        assert_eq!(lic["devices"][0]["can_deactivate"], true);

        // No CSRF token, another buyer's device, an unknown id: refused, nothing changes.
        let path = |id: &str| format!("/api/v1/library/devices/{id}/deactivate");
        assert_eq!(post(&t, &path(&a1), &me, None).await.0, 403);
        assert_eq!(post(&t, &path(&a1), &me, Some("wrong")).await.0, 403);
        let (s, v) = post(&t, &path(&theirs_a), &me, Some(&me.1)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{backend:?}"
        );
        assert_eq!(post(&t, &path("act_nope"), &me, Some(&me.1)).await.0, 404);
        assert_eq!(seats(&t, &their_key).await, 1);
        assert_eq!(seats(&t, &key).await, 3);
        // Not signed in.
        let r = t.client.post(t.url(&path(&a1))).send().await.unwrap();
        assert_eq!(r.status(), 401);

        // Deactivate: the seat is free, and a new device fits again.
        let (s, v) = post(&t, &path(&a1), &me, Some(&me.1)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["deactivated"], true);
        assert_eq!(seats(&t, &key).await, 2, "{backend:?}");
        let (s, _) = t
            .post_json(
                &format!("/api/v1/licenses/{key}/activate"),
                &json!({"device_fingerprint": "device-four-0004"}),
            )
            .await;
        assert_eq!(s, 200);
        // Twice: the device is no longer active → 404, the count does not drop again.
        assert_eq!(post(&t, &path(&a1), &me, Some(&me.1)).await.0, 404);
        assert_eq!(seats(&t, &key).await, 3);
        // Single-use keys are spent by their activation: 409, and the library offers no button.
        let (s, v) = post(&t, &path(&single_a), &me, Some(&me.1)).await;
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("KEY_CONSUMED")), "{v}");

        // The page form: CSRF checked, then a redirect back with a notice.
        let r = t
            .client
            .post(t.url(&format!("/library/devices/{a2}/deactivate")))
            .header("cookie", &me.0)
            .form(&[("csrf", "nope")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(seats(&t, &key).await, 3);
        let r = t
            .client
            .post(t.url(&format!("/library/devices/{a2}/deactivate")))
            .header("cookie", &me.0)
            .form(&[("csrf", me.1.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/library?done=deactivated#licenses");
        assert_eq!(seats(&t, &key).await, 2);
        let html = t
            .client
            .get(t.url("/library?done=deactivated"))
            .header("cookie", &me.0)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("Device deactivated"));
        assert!(
            !html.contains(&format!("deactivate-{single_a}")),
            "no button for a single-use key"
        );
    }
}

async fn sub_row(t: &TestApp, id: &str) -> (String, bool, i64, i64) {
    t.app
        .db
        .fetch_one(sql!(
            "SELECT status, cancel_at_period_end, current_period_end, grace_days FROM subscriptions WHERE id = $1",
            id
        ))
        .await
        .unwrap()
}

#[tokio::test]
async fn subscriptions_cancel_and_resume_in_test_mode() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-pro", "sub@example.com").await;
        t.buy_paid("demo-pro", "other@example.com").await;
        let me = t.library_session("sub@example.com").await;
        let other = t.library_session("other@example.com").await;
        let lib: Value = t
            .client
            .get(t.url("/api/v1/library"))
            .header("cookie", &me.0)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sub = &lib["subscriptions"][0];
        let id = sub["id"].as_str().unwrap().to_string();
        assert_eq!(
            (sub["status"].as_str(), sub["can_cancel"].as_bool()),
            (Some("active"), Some(true))
        );
        let (_, _, end, grace) = sub_row(&t, &id).await;
        assert_eq!(sub["access_until"].as_i64(), Some(end + grace * 86_400));
        let grant_expiry = || async {
            t.app
                .db
                .fetch_i64(sql!(
                    "SELECT expires_at FROM download_grants WHERE order_id = $1",
                    order["order_id"].as_str().unwrap()
                ))
                .await
                .unwrap()
        };
        assert_eq!(grant_expiry().await, end + grace * 86_400);

        // Refused without CSRF, and for another buyer: nothing changes.
        let cancel = format!("/api/v1/library/subscriptions/{id}/cancel");
        let resume = format!("/api/v1/library/subscriptions/{id}/resume");
        assert_eq!(post(&t, &cancel, &me, None).await.0, 403);
        assert_eq!(post(&t, &cancel, &other, Some(&other.1)).await.0, 404, "{backend:?}");
        assert!(!sub_row(&t, &id).await.1);

        // Cancel: at period end; access unchanged (runs to period end + grace). Twice is a no-op.
        let (s, v) = post(&t, &cancel, &me, Some(&me.1)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (
                v["cancel_at_period_end"].as_bool(),
                v["can_resume"].as_bool(),
                v["status"].as_str()
            ),
            (Some(true), Some(true), Some("active"))
        );
        assert_eq!(sub_row(&t, &id).await, ("active".into(), true, end, grace));
        assert_eq!(
            grant_expiry().await,
            end + grace * 86_400,
            "access continues to period end + grace"
        );
        assert_eq!(post(&t, &cancel, &me, Some(&me.1)).await.0, 200);
        assert!(sub_row(&t, &id).await.1);
        let html = t
            .client
            .get(t.url("/library"))
            .header("cookie", &me.0)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("Cancels at period end") && html.contains("be charged again"));
        assert!(html.contains(&format!("id=\"resume-{id}\"")));

        // Resume.
        let (s, v) = post(&t, &resume, &me, Some(&me.1)).await;
        assert_eq!(s, 200);
        assert_eq!(v["cancel_at_period_end"], false);
        assert!(!sub_row(&t, &id).await.1, "{backend:?}");

        // The page forms: CSRF, then redirects with notices.
        let r = t
            .client
            .post(t.url(&format!("/library/subscriptions/{id}/cancel")))
            .header("cookie", &me.0)
            .form(&[("csrf", "")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(!sub_row(&t, &id).await.1);
        for (action, done, state) in [("cancel", "canceled", true), ("resume", "resumed", false)] {
            let r = t
                .client
                .post(t.url(&format!("/library/subscriptions/{id}/{action}")))
                .header("cookie", &me.0)
                .form(&[("csrf", me.1.as_str())])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 303);
            assert_eq!(
                r.headers()["location"].to_str().unwrap(),
                format!("/library?done={done}#sub-{id}")
            );
            assert_eq!(sub_row(&t, &id).await.1, state);
        }

        // Once ended (Stripe deleted it, or a canceled period ran out) it cannot change: 409.
        post(&t, &cancel, &me, Some(&me.1)).await;
        t.app
            .db
            .execute(sql!(
                "UPDATE subscriptions SET current_period_end = $2 WHERE id = $1",
                &id,
                satchel::ids::now() - 60
            ))
            .await
            .unwrap();
        let (s, v) = post(&t, &resume, &me, Some(&me.1)).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("subscription_ended")),
            "{v}"
        );
        assert!(sub_row(&t, &id).await.1, "still canceled");
        let html = t
            .client
            .get(t.url("/library"))
            .header("cookie", &me.0)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains(">Ended<") && !html.contains(&format!("id=\"resume-{id}\"")));
    }
}

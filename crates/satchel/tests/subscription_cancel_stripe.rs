//! A buyer cancels and resumes a Stripe subscription from the library, against a local server
//! that speaks Stripe's API (`POST /v1/subscriptions/{id}` with `cancel_at_period_end`,
//! form-encoded, Idempotency-Key). Stripe's own `customer.subscription.updated` event about
//! the change converges to the same state whether it lands before our call returns (the mock
//! delivers it first) or after; a stale event arriving late changes nothing; a refusal or an
//! outage is a 502 and nothing changes. SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, stripe_event, TestApp};
use serde_json::{json, Value};

const SECRET: &str = "whsec_subscription_test";
const SUB: &str = "sub_1PqTest";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Answer with the updated subscription; Stripe's event comes later (the test sends it).
    Answer,
    /// Deliver Stripe's `customer.subscription.updated` to the store first, then answer.
    WebhookFirst,
    /// 402 card_declined-style refusal.
    Refuse,
    /// 503 every time (our client retries twice with the same key).
    Down,
}

/// One call the mock received: path, headers, form.
type Seen = (String, HeaderMap, HashMap<String, String>);

#[derive(Clone)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<Mode>>,
    app_url: Arc<Mutex<String>>,
    period_end: Arc<Mutex<i64>>,
    events: Arc<Mutex<u32>>,
}

fn subscription(cancel: bool, period_end: i64) -> Value {
    json!({"id": SUB, "object": "subscription", "status": "active", "customer": "cus_test",
        "cancel_at_period_end": cancel, "current_period_end": period_end,
        "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item", "current_period_end": period_end}]}})
}

async fn deliver(app_url: &str, payload: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{app_url}/api/v1/webhooks/stripe"))
        .header(
            "stripe-signature",
            satchel::testing::stripe_signature(payload, SECRET, satchel::ids::now()),
        )
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn update_subscription(
    State(m): State<Mock>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    m.seen
        .lock()
        .unwrap()
        .push((format!("/v1/subscriptions/{id}"), headers, form.clone()));
    let mode = *m.mode.lock().unwrap();
    match mode {
        Mode::Refuse => {
            return (
                StatusCode::PAYMENT_REQUIRED,
                axum::Json(json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such subscription"}})),
            )
                .into_response()
        }
        Mode::Down => {
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": {"message": "down"}}))).into_response()
        }
        _ => {}
    }
    let cancel = form["cancel_at_period_end"] == "true";
    let obj = subscription(cancel, *m.period_end.lock().unwrap());
    if mode == Mode::WebhookFirst {
        let n = {
            let mut e = m.events.lock().unwrap();
            *e += 1;
            *e
        };
        let event = stripe_event(
            &format!("evt_mock_{n}"),
            "customer.subscription.updated",
            satchel::ids::now(),
            obj.clone(),
        );
        let url = m.app_url.lock().unwrap().clone();
        assert_eq!(deliver(&url, &event).await, 200, "the store took Stripe's event first");
    }
    axum::Json(obj).into_response()
}

async fn sessions(body: String) -> axum::response::Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    let id = format!("cs_test_{}", form["client_reference_id"]);
    axum::Json(
        json!({"id": id, "object": "checkout.session", "url": format!("https://checkout.stripe.test/c/pay/{id}")}),
    )
    .into_response()
}

async fn mock() -> (String, Mock) {
    let m = Mock {
        seen: Arc::default(),
        mode: Arc::new(Mutex::new(Mode::Answer)),
        app_url: Arc::default(),
        period_end: Arc::default(),
        events: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/v1/checkout/sessions", axum::routing::post(sessions))
        .route("/v1/subscriptions/{id}", axum::routing::post(update_subscription))
        .with_state(m.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), m)
}

async fn state(t: &TestApp) -> (String, bool) {
    t.app
        .db
        .fetch_one(sql!(
            "SELECT status, cancel_at_period_end FROM subscriptions WHERE provider_subscription_id = $1",
            SUB
        ))
        .await
        .unwrap()
}

async fn call(t: &TestApp, session: &(String, String), id: &str, action: &str) -> (u16, Value) {
    let r = t
        .client
        .post(t.url(&format!("/api/v1/library/subscriptions/{id}/{action}")))
        .header("cookie", &session.0)
        .header("x-csrf-token", &session.1)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn cancel_and_resume_through_stripe_converge_with_its_events_in_any_order() {
    for backend in backends().await {
        let (base, m) = mock().await;
        let t = TestApp::start_demo_with(backend, move |c| {
            c.payments.stripe_secret_key = Some(satchel::config::Secret::new("sk_test_123"));
            c.payments.stripe_api_base = base;
            c.payments.stripe_webhook_secret = Some(satchel::config::Secret::new(SECRET));
            c.payments.test_mode = None;
        })
        .await;
        m.app_url.lock().unwrap().clone_from(&t.base_url);

        // A Stripe subscription: the Checkout Session completes with its subscription id.
        let order = t.purchase("demo-pro", "subscriber@example.com").await;
        let order_id = order["order_id"].as_str().unwrap();
        let session = json!({"id": format!("cs_test_{order_id}"), "object": "checkout.session", "mode": "subscription",
            "payment_status": "paid", "status": "complete", "customer": "cus_test", "subscription": SUB,
            "metadata": {"order_id": order_id}, "client_reference_id": order_id});
        let paid = stripe_event("evt_paid", "checkout.session.completed", satchel::ids::now(), session);
        assert_eq!(t.deliver_stripe(&paid, SECRET).await.0, 200);
        let (sub_id, period_end): (String, i64) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT id, current_period_end FROM subscriptions WHERE provider_subscription_id = $1",
                SUB
            ))
            .await
            .unwrap();
        *m.period_end.lock().unwrap() = period_end;
        let me = t.library_session("subscriber@example.com").await;

        let mut n = 0;
        for (action, mode) in [
            ("cancel", Mode::Answer),
            ("resume", Mode::WebhookFirst),
            ("cancel", Mode::WebhookFirst),
            ("resume", Mode::Answer),
        ] {
            n += 1;
            let cancel = action == "cancel";
            *m.mode.lock().unwrap() = mode;
            let calls = m.seen.lock().unwrap().len();
            let (s, v) = call(&t, &me, &sub_id, action).await;
            assert_eq!(s, 200, "{backend:?} {action} {mode:?}: {v}");
            assert_eq!(v["cancel_at_period_end"], cancel);
            {
                let seen = m.seen.lock().unwrap();
                assert_eq!(seen.len(), calls + 1, "one call to Stripe");
                let (path, h, form) = seen.last().unwrap();
                assert_eq!(path, &format!("/v1/subscriptions/{SUB}"));
                let expected: HashMap<String, String> = [("cancel_at_period_end".to_string(), cancel.to_string())]
                    .into_iter()
                    .collect();
                assert_eq!(form, &expected, "exactly the documented parameter");
                assert_eq!(h["authorization"], "Bearer sk_test_123");
                assert_eq!(h["stripe-version"], satchel::payments::stripe_client::STRIPE_VERSION);
                assert_eq!(h["content-type"], "application/x-www-form-urlencoded");
                assert!(h["idempotency-key"]
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("satchel-sub-{sub_id}-{action}-")));
            }
            assert_eq!(
                state(&t).await,
                ("active".to_string(), cancel),
                "{backend:?} {action} {mode:?}"
            );
            // Stripe's event about this change, arriving after our call returned (or again).
            let event = stripe_event(
                &format!("evt_after_{n}"),
                "customer.subscription.updated",
                satchel::ids::now(),
                subscription(cancel, period_end),
            );
            assert_eq!(t.deliver_stripe(&event, SECRET).await.0, 200);
            assert_eq!(t.deliver_stripe(&event, SECRET).await.1["status"], "duplicate");
            assert_eq!(state(&t).await, ("active".to_string(), cancel), "{backend:?} converged");
            // Asking again for the state it is already in calls Stripe no more.
            assert_eq!(call(&t, &me, &sub_id, action).await.0, 200);
            assert_eq!(m.seen.lock().unwrap().len(), calls + 1);
        }
        // An old event (from the first cancel) delivered late changes nothing.
        let stale = stripe_event(
            "evt_stale_cancel",
            "customer.subscription.updated",
            satchel::ids::now() - 120,
            subscription(true, period_end),
        );
        assert_eq!(t.deliver_stripe(&stale, SECRET).await.0, 200);
        assert_eq!(state(&t).await, ("active".to_string(), false), "{backend:?}");
        // Access still runs to the period end plus grace.
        let expiry = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT expires_at FROM download_grants WHERE order_id = $1",
                order_id
            ))
            .await
            .unwrap();
        assert_eq!(expiry, period_end + 7 * 86_400);

        // Stripe refuses: 502, nothing changed (API and page form).
        *m.mode.lock().unwrap() = Mode::Refuse;
        let (s, v) = call(&t, &me, &sub_id, "cancel").await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (502, Some("payment_provider_unavailable")),
            "{v}"
        );
        assert!(v["error"]["message"].as_str().unwrap().contains("Nothing changed"));
        assert_eq!(state(&t).await, ("active".to_string(), false));
        let r = t
            .client
            .post(t.url(&format!("/library/subscriptions/{sub_id}/cancel")))
            .header("cookie", &me.0)
            .form(&[("csrf", me.1.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let html = r.text().await.unwrap();
        assert!(
            html.contains("role=\"alert\"") && html.contains("Nothing changed"),
            "{html}"
        );
        assert_eq!(state(&t).await, ("active".to_string(), false));

        // Stripe down: retried with the same key, then 502, nothing changed.
        *m.mode.lock().unwrap() = Mode::Down;
        let calls = m.seen.lock().unwrap().len();
        let (s, _) = call(&t, &me, &sub_id, "cancel").await;
        assert_eq!(s, 502);
        {
            let seen = m.seen.lock().unwrap();
            assert_eq!(seen.len(), calls + 3, "first try and two retries");
            let keys: Vec<_> = seen[calls..]
                .iter()
                .map(|(_, h, _)| h["idempotency-key"].clone())
                .collect();
            assert!(keys.windows(2).all(|w| w[0] == w[1]), "retries reuse the key");
        }
        assert_eq!(state(&t).await, ("active".to_string(), false), "{backend:?}");

        // Stripe deleting the subscription ends it; the buyer can no longer resume (409, no call).
        let deleted = stripe_event(
            "evt_deleted",
            "customer.subscription.deleted",
            satchel::ids::now(),
            json!({"id": SUB, "object": "subscription", "status": "canceled"}),
        );
        assert_eq!(t.deliver_stripe(&deleted, SECRET).await.0, 200);
        *m.mode.lock().unwrap() = Mode::Answer;
        let calls = m.seen.lock().unwrap().len();
        let (s, v) = call(&t, &me, &sub_id, "resume").await;
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("subscription_ended")));
        assert_eq!(m.seen.lock().unwrap().len(), calls);
    }
}

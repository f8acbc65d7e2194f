//! Checkout Sessions are created the way Stripe's API expects, with an idempotency key that
//! retries reuse; test mode is refused once Stripe is configured.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::json;

/// One request the mock received: its headers and decoded form.
type Seen = (HeaderMap, HashMap<String, String>);

const SECRET: &str = "whsec_checkout_test";

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Status codes to answer before succeeding.
    failures: Arc<Mutex<Vec<u16>>>,
}

async fn refunds(State(m): State<Mock>, headers: HeaderMap, body: String) -> axum::response::Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    m.seen.lock().unwrap().push((headers, form.clone()));
    axum::Json(json!({"id": format!("re_{}_{}", form["payment_intent"], form["amount"]), "object": "refund", "amount": form["amount"].parse::<i64>().unwrap(), "status": "succeeded"}))
        .into_response()
}

async fn sessions(State(m): State<Mock>, headers: HeaderMap, body: String) -> axum::response::Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap();
    m.seen.lock().unwrap().push((headers, form.clone()));
    if let Some(code) = { m.failures.lock().unwrap().pop() } {
        let status = StatusCode::from_u16(code).unwrap();
        return (status, axum::Json(json!({"error": {"type": "invalid_request_error", "code": "parameter_invalid", "message": "bad things"}}))).into_response();
    }
    let id = format!("cs_test_{}", form["client_reference_id"]);
    axum::Json(
        json!({"id": id, "object": "checkout.session", "url": format!("https://checkout.stripe.test/c/pay/{id}")}),
    )
    .into_response()
}

async fn mock() -> (String, Mock) {
    let m = Mock::default();
    let app = axum::Router::new()
        .route("/v1/checkout/sessions", axum::routing::post(sessions))
        .route("/v1/refunds", axum::routing::post(refunds))
        .with_state(m.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), m)
}

async fn stripe_app(backend: satchel::db::Backend, base: &str) -> TestApp {
    let base = base.to_string();
    TestApp::start_demo_with(backend, move |c| {
        c.payments.stripe_secret_key = Some(satchel::config::Secret::new("sk_test_123"));
        c.payments.stripe_api_base = base;
        c.payments.stripe_webhook_secret = Some(satchel::config::Secret::new(SECRET));
        c.payments.test_mode = None; // default: off once Stripe is configured
    })
    .await
}

#[tokio::test]
async fn checkout_sessions_carry_the_order_exactly() {
    for backend in backends().await {
        let (base, m) = mock().await;
        let t = stripe_app(backend, &base).await;
        let order = t.purchase("demo-ebook", "buyer@example.com").await;
        let id = order["order_id"].as_str().unwrap();
        assert_eq!(
            order["checkout_url"],
            format!("https://checkout.stripe.test/c/pay/cs_test_{id}"),
            "{backend:?}"
        );
        let (session,): (Option<String>,) = t
            .app
            .db
            .fetch_one(sql!("SELECT provider_session_id FROM orders WHERE id = $1", id))
            .await
            .unwrap();
        assert_eq!(session.unwrap(), format!("cs_test_{id}"));
        {
            let seen = m.seen.lock().unwrap();
            let (h, f) = seen.last().unwrap();
            assert_eq!(h["authorization"], "Bearer sk_test_123");
            assert_eq!(h["idempotency-key"], format!("satchel-checkout-{id}").as_str());
            assert_eq!(h["stripe-version"], satchel::payments::stripe_client::STRIPE_VERSION);
            assert_eq!(f["mode"], "payment");
            assert_eq!(f["customer_email"], "buyer@example.com");
            assert_eq!(f["metadata[order_id]"], id);
            assert_eq!(f["payment_intent_data[metadata][order_id]"], id);
            assert_eq!(f["client_reference_id"], id);
            assert_eq!(f["line_items[0][price_data][currency]"], "usd");
            assert_eq!(f["line_items[0][price_data][unit_amount]"], "1900");
            assert_eq!(
                f["line_items[0][price_data][product_data][name]"],
                "The Indie Maker's Handbook"
            );
            assert_eq!(f["line_items[0][quantity]"], "1");
            assert!(f["success_url"].contains(&format!("/orders/{id}/success?token=")));
            assert!(f["cancel_url"].ends_with("/p/demo-ebook"));
        }
        // The test-mode page cannot complete a Stripe order.
        let test_url = format!(
            "{}/checkout/test/{id}?token={}",
            t.base_url,
            order["access_token"].as_str().unwrap()
        );
        let r = t
            .client
            .post(&test_url)
            .form(&[("outcome", "succeeded")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        // Subscriptions.
        let sub = t.purchase("demo-pro", "sub@example.com").await;
        let seen = m.seen.lock().unwrap();
        let (_, f) = seen.last().unwrap();
        assert_eq!(f["mode"], "subscription");
        assert_eq!(f["line_items[0][price_data][recurring][interval]"], "month");
        assert_eq!(
            f["subscription_data[metadata][order_id]"],
            sub["order_id"].as_str().unwrap()
        );
    }
}

#[tokio::test]
async fn retries_reuse_the_idempotency_key_and_refusals_are_a_clear_502() {
    let (base, m) = mock().await;
    let t = stripe_app(satchel::db::Backend::Sqlite, &base).await;
    m.failures.lock().unwrap().push(500);
    let order = t.purchase("demo-templates", "r@example.com").await;
    {
        let seen = m.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "one retry after the 500");
        assert_eq!(seen[0].0["idempotency-key"], seen[1].0["idempotency-key"]);
    }
    assert!(order["checkout_url"]
        .as_str()
        .unwrap()
        .starts_with("https://checkout.stripe.test/"));
    m.failures.lock().unwrap().push(400);
    let (status, body) = t
        .post_json(
            "/api/v1/products/demo-templates/purchase",
            &json!({"email": "x@example.com"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("payment_provider_unavailable"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Nothing was charged"));
}

#[tokio::test]
async fn a_seller_refund_goes_through_stripe_and_applies_once_in_either_order() {
    for backend in backends().await {
        let (base, m) = mock().await;
        let t = stripe_app(backend, &base).await;
        let seller = t.demo_seller().await;
        for (first, label) in [("seller", "our call first"), ("stripe", "Stripe's event first")] {
            let order = t.purchase("demo-ebook", "refund@example.com").await;
            let id = order["order_id"].as_str().unwrap().to_string();
            let session = json!({"id": format!("cs_{id}"), "object": "checkout.session", "payment_status": "paid", "status": "complete",
                "metadata": {"order_id": id}, "payment_intent": format!("pi_{id}"), "client_reference_id": id});
            let paid = satchel::testing::stripe_event(
                &format!("evt_p_{id}"),
                "checkout.session.completed",
                satchel::ids::now(),
                session,
            );
            assert_eq!(t.deliver_stripe(&paid, SECRET).await.0, 200);
            // Stripe's charge.refunded for the refund the mock will create.
            let charge = json!({"id": format!("ch_{id}"), "object": "charge", "amount": 1900, "amount_refunded": 500, "payment_intent": format!("pi_{id}"),
                "refunds": {"data": [{"id": format!("re_pi_{id}_500"), "amount": 500, "status": "succeeded"}]}});
            let event =
                satchel::testing::stripe_event(&format!("evt_r_{id}"), "charge.refunded", satchel::ids::now(), charge);
            let req = satchel::refunds::RefundRequest {
                amount: Some(500),
                reason: "asked nicely".into(),
                items: vec![],
            };
            if first == "stripe" {
                assert_eq!(t.deliver_stripe(&event, SECRET).await.0, 200);
            }
            let out = satchel::refunds::seller_refund(&t.app, &seller, &id, &req)
                .await
                .unwrap();
            if first == "seller" {
                assert!(
                    matches!(out, satchel::refunds::RefundOutcome::Applied { .. }),
                    "{label}"
                );
                assert_eq!(t.deliver_stripe(&event, SECRET).await.0, 200);
            } else {
                assert_eq!(out, satchel::refunds::RefundOutcome::AlreadyApplied, "{label}");
            }
            let (status, refunded): (String, i64) = t
                .app
                .db
                .fetch_one(sql!("SELECT status, refunded_total FROM orders WHERE id = $1", &id))
                .await
                .unwrap();
            assert_eq!(
                (status.as_str(), refunded),
                ("partially_refunded", 500),
                "{backend:?}: {label}"
            );
            let seen = m.seen.lock().unwrap();
            let (h, f) = seen.last().unwrap();
            assert_eq!(f["payment_intent"], format!("pi_{id}"));
            assert_eq!(f["amount"], "500");
            assert!(h["idempotency-key"]
                .to_str()
                .unwrap()
                .starts_with(&format!("satchel-refund-{id}-")));
        }
        // Another seller cannot refund, and too much is refused before Stripe is called.
        let (other, _) =
            satchel::accounts::create_seller_account(&t.app.db, "o@example.com", "password123", "O", "seller")
                .await
                .unwrap();
        let order = t.purchase("demo-ebook", "x@example.com").await;
        let id = order["order_id"].as_str().unwrap();
        let calls = m.seen.lock().unwrap().len();
        let req = satchel::refunds::RefundRequest {
            amount: Some(100),
            reason: String::new(),
            items: vec![],
        };
        assert_eq!(
            satchel::refunds::seller_refund(&t.app, &other.id, id, &req)
                .await
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            satchel::refunds::seller_refund(&t.app, &seller, id, &req)
                .await
                .unwrap_err()
                .code(),
            "order_not_refundable"
        );
        assert_eq!(m.seen.lock().unwrap().len(), calls, "nothing reached Stripe");
    }
}

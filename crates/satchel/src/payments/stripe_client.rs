//! The slice of Stripe's API the store calls: create a Checkout Session, refund a payment,
//! cancel or resume a subscription. Form-encoded exactly as Stripe expects (nested keys like
//! `line_items[0][price_data][unit_amount]`), `Authorization: Bearer sk_…`, a pinned
//! `Stripe-Version`, and an `Idempotency-Key` on every POST so a retry never charges or
//! refunds twice. The base URL is configurable (`SATCHEL_STRIPE_API_BASE`) for testing.

use serde_json::Value;

pub const STRIPE_VERSION: &str = "2024-06-20";

#[derive(Clone)]
pub struct StripeClient {
    base: String,
    secret: crate::config::Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("Stripe could not be reached: {0}")]
    Network(String),
    #[error("Stripe refused the request ({status}): {message}")]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
    },
}

/// Percent-encodes a form value.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl StripeClient {
    pub fn from_config(cfg: &crate::config::PaymentsConfig) -> Option<Self> {
        let secret = cfg.stripe_secret_key.clone()?;
        Some(Self {
            base: cfg.stripe_api_base.trim_end_matches('/').to_string(),
            secret,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .ok()?,
        })
    }

    /// POSTs form `params` to `path` with an idempotency key; retries network errors, 429 and
    /// 5xx twice with the same key (Stripe then replays the first result instead of acting again).
    pub async fn post(
        &self,
        path: &str,
        params: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        let body = params
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut last = StripeError::Network("no attempt".into());
        for attempt in 0..3u64 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
            }
            let resp = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(self.secret.expose())
                .header("Stripe-Version", STRIPE_VERSION)
                .header("Idempotency-Key", idempotency_key)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone())
                .send()
                .await;
            match resp {
                Err(e) => last = StripeError::Network(e.to_string()),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let json: Value = r.json().await.unwrap_or(Value::Null);
                    if (200..300).contains(&status) {
                        return Ok(json);
                    }
                    last = StripeError::Api {
                        status,
                        code: json["error"]["code"].as_str().map(str::to_string),
                        message: json["error"]["message"].as_str().unwrap_or("no message").to_string(),
                    };
                    if status != 429 && status < 500 {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

/// One line on the Stripe-hosted page.
pub struct Line {
    pub name: String,
    pub amount: i64,
    pub interval: Option<String>,
}

/// Parameters of `POST /v1/checkout/sessions` for an order.
pub fn checkout_params(
    order_id: &str,
    currency: &str,
    email: &str,
    lines: &[Line],
    success_url: &str,
    cancel_url: &str,
) -> Vec<(String, String)> {
    let subscription = lines.iter().any(|l| l.interval.is_some());
    let mut p: Vec<(String, String)> = vec![
        (
            "mode".into(),
            if subscription { "subscription" } else { "payment" }.into(),
        ),
        ("customer_email".into(), email.into()),
        ("success_url".into(), success_url.into()),
        ("cancel_url".into(), cancel_url.into()),
        ("client_reference_id".into(), order_id.into()),
        ("metadata[order_id]".into(), order_id.into()),
    ];
    if subscription {
        p.push(("subscription_data[metadata][order_id]".into(), order_id.into()));
    } else {
        p.push(("payment_intent_data[metadata][order_id]".into(), order_id.into()));
    }
    for (i, l) in lines.iter().enumerate() {
        let k = |s: &str| format!("line_items[{i}]{s}");
        p.push((k("[price_data][currency]"), currency.to_ascii_lowercase()));
        p.push((k("[price_data][unit_amount]"), l.amount.to_string()));
        p.push((k("[price_data][product_data][name]"), l.name.clone()));
        if let Some(interval) = &l.interval {
            p.push((k("[price_data][recurring][interval]"), interval.clone()));
        }
        p.push((k("[quantity]"), "1".into()));
    }
    p
}

/// `POST /v1/refunds` for an order's payment; returns Stripe's refund id (`re_…`), which the
/// refund is recorded under so Stripe's own `charge.refunded` for it applies once.
pub async fn refund(
    client: &StripeClient,
    payment_intent: &str,
    amount: i64,
    order_id: &str,
    idempotency_key: &str,
) -> Result<String, StripeError> {
    let params = vec![
        ("payment_intent".to_string(), payment_intent.to_string()),
        ("amount".to_string(), amount.to_string()),
        ("metadata[order_id]".to_string(), order_id.to_string()),
    ];
    let r = client.post("/v1/refunds", &params, idempotency_key).await?;
    r["id"].as_str().map(str::to_string).ok_or_else(|| StripeError::Api {
        status: 200,
        code: None,
        message: "Stripe answered without a refund id".into(),
    })
}

/// `POST /v1/subscriptions/{id}` with `cancel_at_period_end=true|false`: the buyer cancels at
/// the end of the paid period, or takes that back. Returns Stripe's Subscription object.
pub async fn set_cancel_at_period_end(
    client: &StripeClient,
    subscription_id: &str,
    cancel: bool,
    idempotency_key: &str,
) -> Result<Value, StripeError> {
    let params = vec![("cancel_at_period_end".to_string(), cancel.to_string())];
    let r = client
        .post(
            &format!("/v1/subscriptions/{}", enc(subscription_id)),
            &params,
            idempotency_key,
        )
        .await?;
    if r["id"].as_str() != Some(subscription_id) {
        return Err(StripeError::Api {
            status: 200,
            code: None,
            message: "Stripe answered without the subscription".into(),
        });
    }
    Ok(r)
}

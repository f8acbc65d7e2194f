//! Receipts through the outbox: `.eml` files in the embedded shape, a real SMTP server when
//! configured, and a failing transport that never touches the order.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, SmtpServer, TestApp};

fn decoded(raw: &str) -> String {
    // Bodies may be quoted-printable: undo soft breaks and =3D so assertions read plainly.
    raw.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=")
}

#[tokio::test]
async fn receipt_lands_in_the_outbox_as_eml() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-ebook", "reader@example.com").await;
        assert!(t.drain_jobs().await >= 1);
        let files: Vec<_> = std::fs::read_dir(t.data_dir.join("outbox"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(files.len(), 1, "{backend:?}: one receipt");
        let raw = decoded(&std::fs::read_to_string(files[0].path()).unwrap());
        assert!(raw.contains("To: reader@example.com"));
        assert!(raw.contains("Subject: Your Satchel Demo Store order"), "{raw}");
        assert!(raw.contains("text/plain") && raw.contains("text/html"));
        assert!(
            raw.contains("/api/v1/downloads/d1."),
            "receipt carries the download link"
        );
        assert!(raw.contains(order["order_id"].as_str().unwrap()));
        let (status,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT status FROM email_outbox"))
            .await
            .unwrap();
        assert_eq!(status, "sent");
        // The link in the receipt works.
        let link = raw
            .split("Download The Indie Maker's Handbook: ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim();
        assert_eq!(t.client.get(link).send().await.unwrap().status(), 302);
    }
}

#[tokio::test]
async fn receipts_go_through_a_real_smtp_server_and_failures_never_touch_the_order() {
    let Some(smtp) = SmtpServer::start().await else { return };
    for backend in backends().await {
        let url = smtp.url.clone();
        let t = TestApp::start_demo_with(backend, |c| c.email.smtp_url = Some(satchel::config::Secret::new(url))).await;
        let before = smtp.messages().len();
        let who = format!("{}@example.com", backend.name());
        t.buy_paid("demo-templates", &who).await;
        t.drain_jobs().await;
        let msgs = smtp.messages();
        assert_eq!(msgs.len(), before + 1, "{backend:?}");
        let m = msgs.iter().find(|m| m.contains(&who)).map(|m| decoded(m)).unwrap();
        assert!(m.contains("Notion Life OS Templates"));

        // SMTP down: the order is paid anyway; the email waits to retry with the error recorded.
        let t = TestApp::start_demo_with(backend, |c| {
            c.email.smtp_url = Some(satchel::config::Secret::new("smtp://127.0.0.1:1".to_string()));
        })
        .await;
        let order = t.buy_paid("demo-templates", "x@example.com").await;
        t.drain_jobs().await;
        let (status, err): (String, Option<String>) = t
            .app
            .db
            .fetch_one(sql!("SELECT status, last_error FROM email_outbox"))
            .await
            .unwrap();
        assert_eq!(status, "retrying");
        assert!(err.unwrap().contains("SMTP"));
        let (o,): (String,) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT status FROM orders WHERE id = $1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(o, "paid");
        let (js,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT status FROM jobs WHERE kind = 'email.send'"))
            .await
            .unwrap();
        assert_eq!(js, "queued", "retried later with backoff");
    }
}

#[tokio::test]
async fn an_override_folder_replaces_built_in_templates_and_html_escapes_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("receipt.txt"),
        "Custom receipt for {{ order_id }} at {{ store_name }}: {{ total }}\n",
    )
    .unwrap();
    let templates = dir.path().to_path_buf();
    let t = TestApp::start_demo_with(satchel::db::Backend::Sqlite, |c| {
        c.email.templates_dir = Some(templates)
    })
    .await;
    let seller = t.demo_seller().await;
    let evil: satchel::catalog::NewProduct = serde_json::from_value(serde_json::json!({
        "title": "<script>alert(1)</script> Kit", "slug": "evil-kit", "price": 500, "currency": "USD", "status": "published"
    }))
    .unwrap();
    satchel::catalog::create_product(&t.app.db, &seller, evil)
        .await
        .unwrap();
    let order = t.buy_paid("evil-kit", "o@example.com").await;
    t.drain_jobs().await;
    let (text, html): (String, String) = t
        .app
        .db
        .fetch_one(sql!("SELECT body_text, body_html FROM email_outbox"))
        .await
        .unwrap();
    assert_eq!(
        text,
        format!(
            "Custom receipt for {} at Satchel Demo Store: $5.00\n",
            order["order_id"].as_str().unwrap()
        )
    );
    assert!(!html.contains("<script>alert"), "titles are escaped in HTML");
    assert!(html.contains("&lt;script&gt;alert(1)"), "{html}");
    assert!(html.contains("Satchel Demo Store"), "the built-in HTML is still used");
}

#[tokio::test]
async fn email_me_my_links_reveals_nothing_and_sends_only_to_the_buyer() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-ebook", "reader@example.com").await;
        let id = order["order_id"].as_str().unwrap();
        t.drain_jobs().await;
        let before = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM email_outbox"))
            .await
            .unwrap();
        let mut answers = Vec::new();
        for (email, order_id) in [
            ("Reader@Example.com", id),
            ("other@example.com", id),
            ("reader@example.com", "ord_nope"),
        ] {
            let (s, body) = t
                .post_json(
                    "/api/v1/orders/lookup",
                    &serde_json::json!({"email": email, "order_id": order_id}),
                )
                .await;
            assert_eq!(s, 202, "{backend:?}");
            answers.push(body);
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "identical answers whatever matched"
        );
        let sent: Vec<(String, String)> = t
            .app
            .db
            .fetch_all(sql!("SELECT to_email, kind FROM email_outbox ORDER BY id"))
            .await
            .unwrap();
        assert_eq!(sent.len() as i64, before + 1, "only the matching lookup sent anything");
        assert_eq!(
            sent.last().unwrap(),
            &("reader@example.com".to_string(), "receipt".to_string())
        );
        let (s, _) = t
            .post_json(
                "/api/v1/orders/lookup",
                &serde_json::json!({"email": "nope", "order_id": id}),
            )
            .await;
        assert_eq!(s, 422);
    }
}

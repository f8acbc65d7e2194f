//! Download abuse detection and the seller's grant and flag actions, on SQLite and
//! PostgreSQL: downloads from distinct networks (via `X-Forwarded-For`, trusted here) ask
//! the buyer to re-confirm by email (GET on the link consumes nothing, POST does), then
//! suspend with one flag and one seller alert; flag actions; exactness under concurrency;
//! grant reset / extend / revoke with per-seller isolation; the dashboard pages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use satchel::config::Config;
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};

mod common;

use common::dashboard::{get, login, post_form};
use serde_json::{json, Value};

fn trusting(c: &mut Config) {
    c.server.trust_forwarded_for = true;
}

/// Buys demo-templates for `email`; returns (order id, grant id, download url), with the
/// grant's allowance raised to `max` so thresholds, not the count, are what stop downloads.
async fn bought(t: &TestApp, email: &str, max: i64) -> (String, String, String) {
    let o = t.buy_paid("demo-templates", email).await;
    let order_id = o["order_id"].as_str().unwrap().to_string();
    let url = o["items"][0]["download_url"].as_str().unwrap().to_string();
    let gid = t.grant_of(&order_id).await;
    t.app
        .db
        .execute(sql!(
            "UPDATE download_grants SET max_downloads = $2, remaining = $2 WHERE id = $1",
            &gid,
            max
        ))
        .await
        .unwrap();
    (order_id, gid, url)
}

/// One download start from `ip`: (status, JSON body or Null).
async fn download_from(t: &TestApp, url: &str, ip: &str) -> (u16, Value) {
    let r = t.client.get(url).header("x-forwarded-for", ip).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn grant(t: &TestApp, gid: &str) -> (String, i64) {
    t.app
        .db
        .fetch_one(sql!("SELECT status, remaining FROM download_grants WHERE id = $1", gid))
        .await
        .unwrap()
}

/// Waits (up to 10 s) until the grant's status is `want` (detection runs after the answer).
async fn wait_status(t: &TestApp, gid: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = grant(t, gid).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "grant {gid} stayed {status}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn count(t: &TestApp, q: satchel::db::Query) -> i64 {
    t.app.db.fetch_i64(q).await.unwrap()
}

async fn emails(t: &TestApp, kind: &str) -> Vec<(String, String)> {
    t.app
        .db
        .fetch_all(sql!(
            "SELECT to_email, body_text FROM email_outbox WHERE kind = $1 ORDER BY id",
            kind
        ))
        .await
        .unwrap()
}

async fn all_flags(t: &TestApp) -> usize {
    usize::try_from(count(t, sql!("SELECT COUNT(*) FROM abuse_flags")).await).unwrap()
}

async fn demo_key(t: &TestApp) -> String {
    satchel::accounts::create_api_key(&t.app.db, satchel::demo::DEMO_EMAIL, "test")
        .await
        .unwrap()
}

async fn api(t: &TestApp, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = match method {
        "GET" => t.client.get(t.url(path)),
        _ => t.client.post(t.url(path)),
    }
    .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sharing_asks_the_buyer_to_reconfirm_then_suspends_with_one_flag() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, trusting).await;
        let (order_id, gid, url) = bought(&t, "sharer@example.com", 50).await;

        // Two networks: nothing happens. The third crosses the soft threshold (3).
        for ip in ["10.0.1.7", "10.0.2.7", "10.0.3.7"] {
            assert_eq!(download_from(&t, &url, ip).await.0, 302, "{backend:?} {ip}");
        }
        wait_status(&t, &gid, "reconfirm").await;
        let (_, remaining) = grant(&t, &gid).await;
        assert_eq!(remaining, 47);

        // Refused while waiting, counting nothing, explaining the email.
        let (status, body) = download_from(&t, &url, "10.0.1.7").await;
        assert_eq!(status, 403, "{backend:?}");
        assert_eq!(body["error"]["code"], "reconfirm_required");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("emailed you a link"),
            "{body}"
        );
        let (_, body) = download_from(&t, &url, "10.0.9.7").await;
        assert_eq!(body["error"]["code"], "reconfirm_required");
        assert_eq!(grant(&t, &gid).await.1, 47, "refusals count nothing");
        // The browser gets a page saying the same.
        let r = t
            .client
            .get(&url)
            .header("accept", "text/html")
            .header("x-forwarded-for", "10.0.1.7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let html = r.text().await.unwrap();
        assert!(html.contains("<html") && html.contains("emailed you a link"), "{html}");
        assert!(html.contains("Check your email to continue"), "{html}");

        // Exactly one email to the buyer, with the link.
        let mails = emails(&t, "download_reconfirm").await;
        assert_eq!(mails.len(), 1, "{backend:?}: one re-confirmation email");
        assert_eq!(mails[0].0, "sharer@example.com");
        let link = mails[0]
            .1
            .split_whitespace()
            .find(|w| w.contains("/downloads/reconfirm/"))
            .unwrap()
            .to_string();

        // The buyer's library says the same instead of offering the link.
        let (cookie, _) = t.library_session("sharer@example.com").await;
        let html = library_html(&t, &cookie).await;
        assert!(html.contains("we emailed you a link to confirm"), "{html}");

        // GET (a person, or a mail scanner) only shows the button.
        for _ in 0..2 {
            let r = t.client.get(&link).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let html = r.text().await.unwrap();
            assert!(
                html.contains("<form method=\"post\"") && html.contains("id=\"confirm\""),
                "{html}"
            );
            assert_eq!(grant(&t, &gid).await.0, "reconfirm", "GET consumes nothing");
        }
        // A tampered link is not a link.
        let r = t.client.post(format!("{link}x")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(grant(&t, &gid).await.0, "reconfirm");
        // POST confirms, once.
        let r = t.client.post(&link).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(html.contains("/api/v1/downloads/"), "{html}");
        assert_eq!(grant(&t, &gid).await.0, "active");
        let r = t.client.post(&link).send().await.unwrap();
        assert_eq!(r.status(), 410);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "link_used");

        // Downloads resume; the buyer is not asked again within the window.
        assert_eq!(download_from(&t, &url, "10.0.1.7").await.0, 302);
        assert_eq!(download_from(&t, &url, "10.0.4.7").await.0, 302);
        assert_eq!(
            satchel::abuse::evaluate(&t.app, &gid).await.unwrap(),
            satchel::abuse::Outcome::Nothing,
            "5 networks: under the suspension threshold, already confirmed"
        );
        assert_eq!(grant(&t, &gid).await.0, "active");
        assert_eq!(emails(&t, "download_reconfirm").await.len(), 1);

        // The sixth network suspends: one flag, one seller alert.
        assert_eq!(download_from(&t, &url, "10.0.5.7").await.0, 302);
        assert_eq!(download_from(&t, &url, "2001:db8:6::1").await.0, 302);
        wait_status(&t, &gid, "suspended").await;
        let (status, body) = download_from(&t, &url, "10.0.1.7").await;
        assert_eq!(status, 403);
        assert_eq!(body["error"]["code"], "access_revoked");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("suspended for unusual activity"),
            "{body}"
        );
        assert_eq!(
            count(&t, sql!("SELECT COUNT(*) FROM abuse_flags WHERE subject_id = $1", &gid)).await,
            1
        );
        let alerts = emails(&t, "abuse_alert").await;
        assert_eq!(alerts.len(), 1, "{backend:?}: one seller alert");
        assert_eq!(alerts[0].0, satchel::demo::DEMO_EMAIL);
        assert!(
            alerts[0].1.contains(&order_id) && alerts[0].1.contains("2001:db8:6:0::/64"),
            "{}",
            alerts[0].1
        );
        // Evaluating again changes nothing.
        assert_eq!(
            satchel::abuse::evaluate(&t.app, &gid).await.unwrap(),
            satchel::abuse::Outcome::Nothing
        );

        // The seller sees the flag with what it is about.
        let key = demo_key(&t).await;
        let (status, list) = api(&t, &key, "GET", "/api/v1/seller/abuse-flags", None).await;
        assert_eq!(status, 200);
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list}");
        let flag = &items[0];
        assert_eq!(flag["reason"], "download_sharing");
        assert_eq!(flag["grant"]["order_id"], order_id.as_str());
        assert_eq!(flag["grant"]["buyer_email"], "sharer@example.com");
        assert_eq!(flag["detail"]["distinct_prefixes"], 6);
        assert_eq!(flag["detail"]["prefixes"].as_array().unwrap().len(), 6);
        let flag_id = flag["id"].as_str().unwrap().to_string();

        // Another seller neither sees nor touches it.
        let (_, other_key) = t.seller_with_key("other@example.com").await;
        let (_, list) = api(&t, &other_key, "GET", "/api/v1/seller/abuse-flags?status=all", None).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 0);
        let (status, _) = api(
            &t,
            &other_key,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{flag_id}/clear"),
            None,
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(grant(&t, &gid).await.0, "suspended");

        // Clear: the download works again and what was accepted does not trip it again.
        let html = library_html(&t, &cookie).await;
        assert!(html.contains("suspended for unusual activity"), "library: {html}");
        let (status, cleared) = api(
            &t,
            &key,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{flag_id}/clear"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{cleared}");
        assert_eq!(cleared["status"], "resolved");
        assert_eq!(cleared["resolution"], "cleared");
        assert_eq!(grant(&t, &gid).await.0, "active");
        assert_eq!(download_from(&t, &url, "10.0.1.7").await.0, 302);
        assert_eq!(
            satchel::abuse::evaluate(&t.app, &gid).await.unwrap(),
            satchel::abuse::Outcome::Nothing
        );
        let (status, body) = api(
            &t,
            &key,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{flag_id}/revoke"),
            None,
        )
        .await;
        assert_eq!(status, 409);
        assert_eq!(body["error"]["code"], "flag_resolved");
        let (_, open) = api(&t, &key, "GET", "/api/v1/seller/abuse-flags", None).await;
        assert_eq!(open["items"].as_array().unwrap().len(), 0);
        let (_, resolved) = api(&t, &key, "GET", "/api/v1/seller/abuse-flags?status=resolved", None).await;
        assert_eq!(resolved["items"].as_array().unwrap().len(), 1);
        let (status, _) = api(&t, &key, "GET", "/api/v1/seller/abuse-flags?status=nope", None).await;
        assert_eq!(status, 422);
        assert_eq!(
            count(
                &t,
                sql!(
                    "SELECT COUNT(*) FROM audit_log WHERE subject_id = $1 AND action = 'abuse_flag.clear'",
                    &flag_id
                )
            )
            .await,
            1
        );
    }
}

#[tokio::test]
async fn flag_actions_suspend_and_revoke_and_network_flags_only_clear() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| {
            trusting(c);
            c.abuse.soft_prefixes = 0;
            c.abuse.suspend_prefixes = 2;
        })
        .await;
        let key = demo_key(&t).await;
        let mut flags = Vec::new();
        for n in 0..2 {
            let (_, gid, url) = bought(&t, &format!("b{n}@example.com"), 10).await;
            for ip in ["10.1.1.1", "10.1.2.1"] {
                assert_eq!(download_from(&t, &url, ip).await.0, 302);
            }
            wait_status(&t, &gid, "suspended").await;
            let (fid,): (String,) = t
                .app
                .db
                .fetch_one(sql!("SELECT id FROM abuse_flags WHERE subject_id = $1", &gid))
                .await
                .unwrap();
            flags.push((fid, gid, url));
        }
        // suspend: the flag is resolved, the download stays suspended.
        let (fid, gid, url) = &flags[0];
        let (status, v) = api(
            &t,
            &key,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{fid}/suspend"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["resolution"], "suspended");
        assert_eq!(grant(&t, gid).await.0, "suspended");
        assert_eq!(download_from(&t, url, "10.1.1.1").await.0, 403);
        // revoke: dead.
        let (fid, gid, url) = &flags[1];
        let (status, v) = api(
            &t,
            &key,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{fid}/revoke"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(grant(&t, gid).await.0, "revoked");
        let (status, body) = download_from(&t, url, "10.1.1.1").await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("access_revoked")));
        let (status, _) = api(
            &t,
            &key,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{fid}/explode"),
            None,
        )
        .await;
        assert_eq!(status, 422);
        // Resetting a flagged download from its order settles the flag too.
        let (_, gid3, url3) = bought(&t, "b3@example.com", 10).await;
        for ip in ["10.1.1.1", "10.1.2.1"] {
            assert_eq!(download_from(&t, &url3, ip).await.0, 302);
        }
        wait_status(&t, &gid3, "suspended").await;
        let (status, _) = api(&t, &key, "POST", &format!("/api/v1/seller/grants/{gid3}/reset"), None).await;
        assert_eq!(status, 200);
        let (flag_status, resolution): (String, Option<String>) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT status, resolution FROM abuse_flags WHERE subject_id = $1",
                &gid3
            ))
            .await
            .unwrap();
        assert_eq!(
            (flag_status.as_str(), resolution.as_deref()),
            ("resolved", Some("cleared"))
        );
        assert_eq!(download_from(&t, &url3, "10.1.1.1").await.0, 302);

        // A store-wide key-guessing flag: only an admin (the demo seller is one) sees it,
        // and it only clears.
        satchel::licensing::guessing::raise_flag(&t.app.db, "192.0.2.0/24", &json!({"misses": 20}), 600)
            .await
            .unwrap();
        let (_, plain) = t.seller_with_key("plain@example.com").await;
        let (_, theirs) = api(&t, &plain, "GET", "/api/v1/seller/abuse-flags?status=all", None).await;
        assert_eq!(theirs["items"].as_array().unwrap().len(), 0, "{theirs}");
        let admin = key.clone();
        let (_, all) = api(&t, &admin, "GET", "/api/v1/seller/abuse-flags", None).await;
        let net = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["subject_kind"] == "network")
            .expect("the admin sees store-wide flags")
            .clone();
        assert_eq!(net["seller_id"], "");
        assert_eq!(net["actions"], json!(["clear"]));
        // Paged: one at a time, the cursor walks every flag once.
        let mut seen = Vec::new();
        let mut path = "/api/v1/seller/abuse-flags?status=all&limit=1".to_string();
        loop {
            let (status, page) = api(&t, &admin, "GET", &path, None).await;
            assert_eq!(status, 200);
            assert_eq!(page["items"].as_array().unwrap().len(), 1);
            seen.push(page["items"][0]["id"].as_str().unwrap().to_string());
            match page["next_cursor"].as_str() {
                Some(c) => path = format!("/api/v1/seller/abuse-flags?status=all&limit=1&cursor={c}"),
                None => break,
            }
        }
        let total = all_flags(&t).await;
        assert_eq!(seen.len(), total, "{seen:?}");
        let (status, _) = api(&t, &admin, "GET", "/api/v1/seller/abuse-flags?limit=0", None).await;
        assert_eq!(status, 422);
        let nid = net["id"].as_str().unwrap();
        let (status, body) = api(
            &t,
            &plain,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{nid}/clear"),
            None,
        )
        .await;
        assert_eq!(status, 404, "a seller cannot act on a store-wide flag: {body}");
        // Acting as a store, an admin sees that store's flags only.
        let r = t
            .client
            .get(t.url("/api/v1/seller/abuse-flags?status=all"))
            .bearer_auth(&admin)
            .header("x-act-as-seller", t.demo_seller().await)
            .send()
            .await
            .unwrap();
        let scoped: Value = r.json().await.unwrap();
        assert!(
            scoped["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["subject_kind"] == "grant"),
            "{scoped}"
        );
        let (status, body) = api(
            &t,
            &admin,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{nid}/suspend"),
            None,
        )
        .await;
        assert_eq!(status, 409);
        assert_eq!(body["error"]["code"], "action_not_applicable");
        assert!(body["error"]["message"].as_str().unwrap().contains("only be cleared"));
        let (status, body) = api(
            &t,
            &admin,
            "POST",
            &format!("/api/v1/seller/abuse-flags/{nid}/clear"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "resolved");
    }
}

#[tokio::test]
async fn concurrent_downloads_from_many_networks_stay_exact_and_flag_once() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| {
            trusting(c);
            c.abuse.soft_prefixes = 0;
            c.abuse.soft_starts_per_hour = 0;
        })
        .await;
        let (_, gid, url) = bought(&t, "crowd@example.com", 10).await;
        let mut tasks = Vec::new();
        for i in 0..24 {
            let (client, url) = (t.client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .get(&url)
                    .header("x-forwarded-for", format!("10.2.{i}.9"))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let (status, code) = task.await.unwrap();
            match status {
                302 => ok += 1,
                403 => assert!(
                    ["download_limit_reached", "access_revoked"].contains(&code.as_str()),
                    "{code}"
                ),
                other => panic!("{backend:?}: unexpected {other} {code}"),
            }
        }
        wait_status(&t, &gid, "suspended").await;
        let (_, remaining) = grant(&t, &gid).await;
        assert!(remaining >= 0, "{backend:?}: remaining {remaining}");
        assert!(ok >= 6, "suspension needs six networks to have downloaded: {ok}");
        assert_eq!(remaining, 10 - ok, "every success counted once");
        assert_eq!(
            count(
                &t,
                sql!("SELECT COUNT(*) FROM download_events WHERE grant_id = $1", &gid)
            )
            .await,
            ok
        );
        // Late evaluations (if any are still running) find nothing to do; exactly one flag and alert.
        for _ in 0..3 {
            satchel::abuse::evaluate(&t.app, &gid).await.unwrap();
        }
        assert_eq!(
            count(&t, sql!("SELECT COUNT(*) FROM abuse_flags WHERE subject_id = $1", &gid)).await,
            1,
            "{backend:?}"
        );
        assert_eq!(emails(&t, "abuse_alert").await.len(), 1);
        assert_eq!(emails(&t, "download_reconfirm").await.len(), 0, "soft measure off");
    }
}

#[tokio::test]
async fn download_velocity_asks_for_reconfirmation() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| {
            trusting(c);
            c.abuse.soft_starts_per_hour = 4;
        })
        .await;
        let (_, gid, url) = bought(&t, "fast@example.com", 20).await;
        for _ in 0..4 {
            assert_eq!(download_from(&t, &url, "10.3.0.1").await.0, 302);
        }
        wait_status(&t, &gid, "reconfirm").await;
        let (status, body) = download_from(&t, &url, "10.3.0.1").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("reconfirm_required"))
        );
        assert_eq!(emails(&t, "download_reconfirm").await.len(), 1);
    }
}

#[tokio::test]
async fn seller_grant_actions_reset_extend_revoke_and_isolation() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, trusting).await;
        let key = demo_key(&t).await;
        let (order_id, gid, url) = bought(&t, "buyer@example.com", 2).await;
        t.app
            .db
            .execute(sql!(
                "UPDATE download_grants SET ip_policy = 'bind_first' WHERE id = $1",
                &gid
            ))
            .await
            .unwrap();
        for _ in 0..2 {
            assert_eq!(download_from(&t, &url, "10.4.0.1").await.0, 302);
        }
        let (_, body) = download_from(&t, &url, "10.4.0.1").await;
        assert_eq!(body["error"]["code"], "download_limit_reached");

        // The order detail lists its grants.
        let (status, o) = api(&t, &key, "GET", &format!("/api/v1/seller/orders/{order_id}"), None).await;
        assert_eq!(status, 200);
        let g = &o["grants"][0];
        assert_eq!(g["id"], gid.as_str());
        assert_eq!(g["remaining"], 0);
        assert_eq!(g["max_downloads"], 2);
        assert_eq!(g["status"], "active");
        assert_eq!(g["ip_bound"], "10.4.0.0/24");
        assert_eq!(g["product"]["title"], "Notion Life OS Templates");
        let expires = g["expires_at"].as_i64().unwrap();

        // Another seller: 404 for every action, nothing changes.
        let (_, other) = t.seller_with_key("rival@example.com").await;
        for (action, body) in [("reset", None), ("extend", Some(json!({"days": 5}))), ("revoke", None)] {
            let (status, _) = api(
                &t,
                &other,
                "POST",
                &format!("/api/v1/seller/grants/{gid}/{action}"),
                body,
            )
            .await;
            assert_eq!(status, 404, "{backend:?} {action}");
        }
        let (status, _) = api(&t, &other, "GET", &format!("/api/v1/seller/orders/{order_id}"), None).await;
        assert_eq!(status, 404);
        assert_eq!(grant(&t, &gid).await, ("active".to_string(), 0));

        // Reset: all downloads back, binding cleared, from any network.
        let (status, v) = api(&t, &key, "POST", &format!("/api/v1/seller/grants/{gid}/reset"), None).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!((v["remaining"].as_i64(), v["ip_bound"].is_null()), (Some(2), true));
        assert_eq!(download_from(&t, &url, "10.5.0.1").await.0, 302);
        assert_eq!(
            download_from(&t, v["download_url"].as_str().unwrap(), "10.5.0.1")
                .await
                .0,
            302
        );

        // Extend: checked input, then the access window moves.
        for (body, want) in [
            (json!({"days": 0}), 422),
            (json!({"days": 3651}), 422),
            (json!({"days": "x"}), 400),
            (json!({"weeks": 1}), 400),
        ] {
            let (status, _) = api(
                &t,
                &key,
                "POST",
                &format!("/api/v1/seller/grants/{gid}/extend"),
                Some(body),
            )
            .await;
            assert_eq!(status, want);
        }
        let (status, v) = api(
            &t,
            &key,
            "POST",
            &format!("/api/v1/seller/grants/{gid}/extend"),
            Some(json!({"days": 30})),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["expires_at"].as_i64().unwrap(), expires + 30 * 86_400);
        let (status, _) = api(&t, &key, "POST", &format!("/api/v1/seller/grants/{gid}/destroy"), None).await;
        assert_eq!(status, 422);

        // Revoke: dead.
        let (status, v) = api(&t, &key, "POST", &format!("/api/v1/seller/grants/{gid}/revoke"), None).await;
        assert_eq!((status, v["status"].as_str()), (200, Some("revoked")));
        let (status, body) = download_from(&t, &url, "10.5.0.1").await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("access_revoked")));
        assert_eq!(
            count(
                &t,
                sql!(
                    "SELECT COUNT(*) FROM audit_log WHERE subject_id = $1 AND action LIKE 'grant.%'",
                    &gid
                )
            )
            .await,
            3,
            "reset, extend, revoke audit-logged; refusals not"
        );

        // A refunded order's grant stays dead whatever the seller does.
        let (o2, gid2, url2) = bought(&t, "refunded@example.com", 5).await;
        let (status, _) = api(
            &t,
            &key,
            "POST",
            &format!("/api/v1/orders/{o2}/refund"),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 200);
        for (action, body) in [("reset", None), ("extend", Some(json!({"days": 5})))] {
            let (status, v) = api(
                &t,
                &key,
                "POST",
                &format!("/api/v1/seller/grants/{gid2}/{action}"),
                body,
            )
            .await;
            assert_eq!(status, 409, "{action}: {v}");
            assert_eq!(v["error"]["code"], "order_refunded");
        }
        assert_eq!(grant(&t, &gid2).await.0, "revoked");
        assert_eq!(download_from(&t, &url2, "10.6.0.1").await.0, 403);

        // Every new endpoint is in the OpenAPI document.
        let spec: Value = t
            .client
            .get(t.url("/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for path in [
            "/api/v1/seller/grants/{grant_id}/{action}",
            "/api/v1/seller/abuse-flags",
            "/api/v1/seller/abuse-flags/{flag_id}/{action}",
            "/downloads/reconfirm/{token}",
        ] {
            assert!(spec["paths"][path].is_object(), "{path} missing from the spec");
        }
        assert!(spec["paths"]["/downloads/reconfirm/{token}"]["post"].is_object());
    }
}

fn link_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.contains("/downloads/reconfirm/"))
        .map(|w| w.trim_matches(|c: char| c == '"' || c == '<' || c == '>').to_string())
        .expect("a re-confirmation link")
}

#[tokio::test]
async fn a_lapsed_reconfirm_link_is_replaced_on_the_next_attempt_and_confirms_once() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, trusting).await;
        let (_, gid, url) = bought(&t, "late@example.com", 20).await;
        for ip in ["10.9.1.1", "10.9.2.1", "10.9.3.1"] {
            assert_eq!(download_from(&t, &url, ip).await.0, 302);
        }
        wait_status(&t, &gid, "reconfirm").await;
        let first = link_in(&emails(&t, "download_reconfirm").await[0].1);
        // Attempts while the link is live send nothing more.
        for _ in 0..3 {
            assert_eq!(download_from(&t, &url, "10.9.1.1").await.0, 403);
        }
        assert_eq!(emails(&t, "download_reconfirm").await.len(), 1);
        // The emailed link lapses (sent more than reconfirm_link_minutes ago): the next
        // attempt, however many come at once, emails exactly one new link.
        t.app
            .db
            .execute(sql!(
                "UPDATE download_grants SET reconfirm_sent_at = reconfirm_sent_at - 3601 WHERE id = $1",
                &gid
            ))
            .await
            .unwrap();
        let attempts: Vec<_> = (0..6)
            .map(|_| {
                let (client, url) = (t.client.clone(), url.clone());
                tokio::spawn(async move {
                    client
                        .get(&url)
                        .header("x-forwarded-for", "10.9.1.1")
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for a in attempts {
            assert_eq!(a.await.unwrap(), 403);
        }
        let mails = emails(&t, "download_reconfirm").await;
        assert_eq!(mails.len(), 2, "{backend:?}: one replacement link");
        let second = link_in(&mails[1].1);
        assert_ne!(first, second);
        let r = t.client.post(&first).send().await.unwrap();
        assert_eq!(r.status(), 410, "the replaced link no longer works");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "link_replaced");
        // Many presses of the new link at once: exactly one confirms.
        let presses: Vec<_> = (0..5)
            .map(|_| {
                let (client, link) = (t.client.clone(), second.clone());
                tokio::spawn(async move { client.post(&link).send().await.unwrap().status().as_u16() })
            })
            .collect();
        let mut codes = Vec::new();
        for p in presses {
            codes.push(p.await.unwrap());
        }
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{backend:?}: {codes:?}");
        assert!(codes.iter().all(|c| *c == 200 || *c == 410), "{codes:?}");
        assert_eq!(grant(&t, &gid).await.0, "active");
        assert_eq!(
            count(
                &t,
                sql!(
                    "SELECT COUNT(*) FROM audit_log WHERE subject_id = $1 AND action = 'grant.reconfirmed'",
                    &gid
                )
            )
            .await,
            1
        );
        assert_eq!(download_from(&t, &url, "10.9.1.1").await.0, 302);
    }
}

#[tokio::test]
async fn the_reconfirm_email_goes_through_a_real_smtp_server_and_its_link_works() {
    let Some(smtp) = satchel::testing::SmtpServer::start().await else {
        return;
    };
    for backend in backends().await {
        let smtp_url = smtp.url.clone();
        let t = TestApp::start_demo_with(backend, move |c| {
            trusting(c);
            c.email.smtp_url = Some(satchel::config::Secret::new(smtp_url));
        })
        .await;
        let who = format!("smtp-{}@example.com", backend.name());
        let (_, gid, url) = bought(&t, &who, 20).await;
        for ip in ["10.10.1.1", "10.10.2.1", "10.10.3.1"] {
            assert_eq!(download_from(&t, &url, ip).await.0, 302);
        }
        wait_status(&t, &gid, "reconfirm").await;
        t.drain_jobs().await;
        let msg = smtp
            .messages()
            .into_iter()
            .map(|m| m.replace("=\r\n", "").replace("=\n", "").replace("=3D", "="))
            .find(|m| m.contains(&format!("To: {who}")) && m.contains("/downloads/reconfirm/"))
            .expect("the re-confirmation email was delivered");
        assert!(
            msg.contains("Subject: Confirm your downloads of Notion Life OS Templates"),
            "{msg}"
        );
        let link = link_in(msg.split("text/plain").nth(1).unwrap());
        assert_eq!(t.client.post(&link).send().await.unwrap().status(), 200);
        assert_eq!(grant(&t, &gid).await.0, "active");
    }
}

// ---------- dashboard pages ----------

#[tokio::test]
async fn dashboard_abuse_page_lists_flags_and_acts_with_csrf() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| {
            trusting(c);
            c.abuse.soft_prefixes = 0;
            c.abuse.suspend_prefixes = 2;
        })
        .await;
        let s = login(&t, satchel::demo::DEMO_EMAIL, satchel::demo::DEMO_PASSWORD).await;
        let (status, html) = get(&t, &s, "/dashboard/abuse").await;
        assert_eq!(status, 200);
        assert!(
            html.contains("id=\"no-flags\"") && html.contains("No open flags"),
            "empty state"
        );
        assert!(
            html.contains("href=\"/dashboard/abuse\" aria-current=\"page\""),
            "nav link, current"
        );

        let mut flagged = Vec::new();
        for n in 0..2 {
            let (order_id, gid, url) = bought(&t, &format!("dash{n}@example.com"), 10).await;
            for ip in ["10.7.1.1", "10.7.2.1"] {
                assert_eq!(download_from(&t, &url, ip).await.0, 302);
            }
            wait_status(&t, &gid, "suspended").await;
            flagged.push((order_id, gid, url));
        }
        let (_, html) = get(&t, &s, "/dashboard/abuse").await;
        assert!(!html.contains("id=\"no-flags\""));
        for (order_id, _, _) in &flagged {
            assert!(
                html.contains(&format!("href=\"/dashboard/orders/{order_id}\"")),
                "order link"
            );
        }
        assert!(html.contains("Notion Life OS Templates") && html.contains("dash0@example.com"));
        assert!(
            html.contains("10.7.1.0/24") && html.contains("10.7.2.0/24"),
            "prefixes shown"
        );
        assert!(html.contains("Download link shared"));
        let flag_ids: Vec<String> = t
            .app
            .db
            .fetch_all::<(String,)>(sql!(
                "SELECT id FROM abuse_flags WHERE subject_kind = 'grant' ORDER BY id"
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect();
        for f in &flag_ids {
            for b in ["clear", "suspend", "revoke"] {
                assert!(html.contains(&format!("id=\"{b}-{f}\"")), "{b} button for {f}");
            }
        }

        // Without the session's CSRF token: refused, nothing changes.
        let r = post_form(
            &t,
            &s,
            &format!("/dashboard/abuse/{}/action", flag_ids[0]),
            &[("csrf", "nope"), ("action", "clear")],
        )
        .await;
        assert_eq!(r.status(), 403);
        assert_eq!(grant(&t, &flagged[0].1).await.0, "suspended");
        // Another seller: 404, nothing changes.
        satchel::accounts::create_seller_account(&t.app.db, "rival@example.com", "rival-password", "Rival", "seller")
            .await
            .unwrap();
        let rival = login(&t, "rival@example.com", "rival-password").await;
        let (_, html) = get(&t, &rival, "/dashboard/abuse").await;
        assert!(html.contains("id=\"no-flags\""), "a seller sees only its own flags");
        let r = post_form(
            &t,
            &rival,
            &format!("/dashboard/abuse/{}/action", flag_ids[0]),
            &[("csrf", &rival.csrf), ("action", "revoke")],
        )
        .await;
        assert_eq!(r.status(), 404);
        assert_eq!(grant(&t, &flagged[0].1).await.0, "suspended");

        // Clear and revoke from the page.
        let r = post_form(
            &t,
            &s,
            &format!("/dashboard/abuse/{}/action", flag_ids[0]),
            &[("csrf", &s.csrf), ("action", "clear")],
        )
        .await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/dashboard/abuse?notice=flag_clear");
        assert_eq!(grant(&t, &flagged[0].1).await.0, "active");
        assert_eq!(download_from(&t, &flagged[0].2, "10.7.1.1").await.0, 302);
        let r = post_form(
            &t,
            &s,
            &format!("/dashboard/abuse/{}/action", flag_ids[1]),
            &[("csrf", &s.csrf), ("action", "revoke")],
        )
        .await;
        assert_eq!(r.status(), 303);
        assert_eq!(grant(&t, &flagged[1].1).await.0, "revoked");
        let (_, html) = get(&t, &s, "/dashboard/abuse?notice=flag_clear").await;
        assert!(html.contains("Flag cleared") && html.contains("id=\"no-flags\""));
        let (_, html) = get(&t, &s, "/dashboard/abuse?status=resolved").await;
        assert!(
            html.contains(&format!("id=\"flag-{}\"", flag_ids[0]))
                && html.contains(">cleared<")
                && html.contains(">revoked<")
        );
    }
}

/// A grant's download history, for its seller: every counted download (time, address,
/// network, client, file, size), newest first, paged; another store's grant is a 404; the
/// order page shows the latest.
#[tokio::test]
async fn sellers_see_each_grants_download_history() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, trusting).await;
        let key = demo_key(&t).await;
        let (order_id, gid, url) = bought(&t, "history@example.com", 5).await;
        let events = format!("/api/v1/seller/grants/{gid}/events");
        let (status, v) = api(&t, &key, "GET", &events, None).await;
        assert_eq!(
            (status, v["items"].as_array().unwrap().len()),
            (200, 0),
            "{backend:?}: {v}"
        );
        for (ip, ua) in [
            ("10.9.0.1", "curl/8.5.0"),
            ("2001:db8:5::7", "Mozilla/5.0 (X11) Gecko/20100101 Firefox/128.0"),
        ] {
            let r = t
                .client
                .get(&url)
                .header("x-forwarded-for", ip)
                .header("user-agent", ua)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 302);
        }
        // A refused start is no download.
        t.app
            .db
            .execute(sql!("UPDATE download_grants SET remaining = 0 WHERE id = $1", &gid))
            .await
            .unwrap();
        assert_eq!(download_from(&t, &url, "10.9.0.1").await.0, 403);

        let (status, v) = api(&t, &key, "GET", &events, None).await;
        assert_eq!(status, 200, "{v}");
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{backend:?}: {v}");
        assert!(v["next_cursor"].is_null());
        let newest = &items[0];
        assert_eq!(newest["ip"], "2001:db8:5::7", "newest first");
        assert_eq!(newest["ip_prefix"], "2001:db8:5:0::/64");
        assert_eq!(newest["user_agent"], "Mozilla/5.0 (X11) Gecko/20100101 Firefox/128.0");
        assert_eq!(
            (newest["outcome"].as_str(), newest["file_name"].is_string()),
            (Some("started"), true)
        );
        assert!(newest["bytes"].as_i64().unwrap() > 0 && newest["at"].as_i64().unwrap() > 0);
        assert_eq!(items[1]["ip_prefix"], "10.9.0.0/24");

        // Pages of one: the cursor walks back to the first download, then stops.
        let (_, p1) = api(&t, &key, "GET", &format!("{events}?limit=1"), None).await;
        let cursor = p1["next_cursor"].as_str().unwrap().to_string();
        assert_eq!(p1["items"][0]["id"], newest["id"]);
        let (_, p2) = api(&t, &key, "GET", &format!("{events}?limit=1&cursor={cursor}"), None).await;
        assert_eq!(p2["items"][0]["id"], items[1]["id"]);
        assert!(p2["next_cursor"].is_null(), "{p2}");
        let (status, v) = api(&t, &key, "GET", &format!("{events}?limit=0"), None).await;
        assert_eq!((status, v["error"]["code"].as_str()), (422, Some("invalid_limit")));

        // Another store's seller, or no key: nothing.
        let (_, other) = t.seller_with_key("rival-history@example.com").await;
        assert_eq!(api(&t, &other, "GET", &events, None).await.0, 404);
        assert_eq!(t.client.get(t.url(&events)).send().await.unwrap().status(), 401);

        // The order page shows them, the client by its product token.
        let s = login(&t, satchel::demo::DEMO_EMAIL, satchel::demo::DEMO_PASSWORD).await;
        let (status, html) = get(&t, &s, &format!("/dashboard/orders/{order_id}")).await;
        assert_eq!(status, 200);
        let history = &html[html.find(&format!("id=\"history-{gid}\"")).expect("history row")..];
        assert!(
            history.contains("Download history") && history.contains("10.9.0.1") && history.contains("2001:db8:5::7"),
            "{history}"
        );
        assert!(
            history.contains(">Firefox/128.0<") && history.contains(">curl/8.5.0<"),
            "{history}"
        );
    }
}

#[tokio::test]
async fn dashboard_order_page_resets_extends_and_revokes_downloads() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, trusting).await;
        let s = login(&t, satchel::demo::DEMO_EMAIL, satchel::demo::DEMO_PASSWORD).await;
        let (order_id, gid, url) = bought(&t, "page@example.com", 1).await;
        t.app
            .db
            .execute(sql!(
                "UPDATE download_grants SET ip_policy = 'bind_first' WHERE id = $1",
                &gid
            ))
            .await
            .unwrap();
        assert_eq!(download_from(&t, &url, "10.8.0.1").await.0, 302);
        let (status, html) = get(&t, &s, &format!("/dashboard/orders/{order_id}")).await;
        assert_eq!(status, 200);
        assert!(html.contains("id=\"downloads\"") && html.contains(&format!("id=\"grant-{gid}\"")));
        assert!(
            html.contains("0 of 1") && html.contains("data-label=\"Network\">10.8.0.0/24"),
            "remaining and the bound network"
        );
        for b in ["reset", "extend", "revoke"] {
            assert!(html.contains(&format!("id=\"{b}-{gid}\"")), "{b}");
        }
        let action = format!("/dashboard/orders/{order_id}/grants/{gid}");

        // CSRF and other sellers: refused, nothing changes.
        let r = post_form(&t, &s, &action, &[("csrf", ""), ("action", "reset")]).await;
        assert_eq!(r.status(), 403);
        satchel::accounts::create_seller_account(&t.app.db, "rival@example.com", "rival-password", "Rival", "seller")
            .await
            .unwrap();
        let rival = login(&t, "rival@example.com", "rival-password").await;
        let r = post_form(&t, &rival, &action, &[("csrf", &rival.csrf), ("action", "reset")]).await;
        assert_eq!(r.status(), 404);
        assert_eq!(grant(&t, &gid).await.1, 0);

        // Reset.
        let r = post_form(&t, &s, &action, &[("csrf", &s.csrf), ("action", "reset")]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(grant(&t, &gid).await.1, 1);
        let (_, html) = get(&t, &s, &format!("/dashboard/orders/{order_id}?notice=grant_reset")).await;
        // The binding is cleared (the history below still shows where the download came from).
        assert!(html.contains("Downloads reset") && html.contains("1 of 1"));
        assert!(
            html.contains("data-label=\"Network\"><span class=\"muted\">any</span>"),
            "{html}"
        );
        assert!(!html.contains("data-label=\"Network\">10.8.0.0/24"));
        // Extend: a bad number is a page with the message, then a good one moves the date.
        let (before,): (i64,) = t
            .app
            .db
            .fetch_one(sql!("SELECT expires_at FROM download_grants WHERE id = $1", &gid))
            .await
            .unwrap();
        let r = post_form(
            &t,
            &s,
            &action,
            &[("csrf", &s.csrf), ("action", "extend"), ("days", "0")],
        )
        .await;
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("Days must be 1"));
        let r = post_form(
            &t,
            &s,
            &action,
            &[("csrf", &s.csrf), ("action", "extend"), ("days", "10")],
        )
        .await;
        assert_eq!(r.status(), 303);
        let (after,): (i64,) = t
            .app
            .db
            .fetch_one(sql!("SELECT expires_at FROM download_grants WHERE id = $1", &gid))
            .await
            .unwrap();
        assert_eq!(after, before + 10 * 86_400);
        // Revoke.
        let r = post_form(&t, &s, &action, &[("csrf", &s.csrf), ("action", "revoke")]).await;
        assert_eq!(r.status(), 303);
        assert_eq!(grant(&t, &gid).await.0, "revoked");
        assert_eq!(download_from(&t, &url, "10.8.0.1").await.0, 403);
        let (_, html) = get(&t, &s, &format!("/dashboard/orders/{order_id}")).await;
        assert!(
            !html.contains(&format!("id=\"revoke-{gid}\"")),
            "no revoke button on a revoked download"
        );
    }
}

/// The buyer's library page as a signed-in browser sees it.
async fn library_html(t: &TestApp, cookie: &str) -> String {
    t.client
        .get(t.url("/library"))
        .header("cookie", cookie)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

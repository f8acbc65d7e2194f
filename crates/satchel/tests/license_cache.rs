//! The validation cache (PostgreSQL) never answers with something stale: changes made by
//! this process are seen at once whichever module made them, another process's as soon as
//! its NOTIFY is in, and a listener outage empties the cache. Its own test binary: the count
//! of committed license writes that keeps entries honest is per process, and other tests
//! running beside it would empty the cache all the time.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

async fn post(t: &TestApp, key: &str, action: &str, body: Value) -> (u16, Value) {
    t.post_json(&format!("/api/v1/licenses/{key}/{action}"), &body).await
}

async fn seller_action(t: &TestApp, seller: &str, id: &str, action: &str) -> u16 {
    t.client
        .post(t.url(&format!("/api/v1/seller/licenses/{id}/{action}")))
        .bearer_auth(seller)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Another process writing the same database (a second instance, an admin command): its own
/// connection, none of this process's bookkeeping.
async fn from_another_process(t: &TestApp, statement: &str, id: &str) {
    use sqlx::Connection;
    use std::str::FromStr;
    match t.backend {
        satchel::db::Backend::Postgres => {
            let (schema,): (String,) = t.app.db.fetch_one(sql!("SELECT current_schema()")).await.unwrap();
            let opts = sqlx::postgres::PgConnectOptions::from_str(&satchel::testing::pg_admin_url())
                .unwrap()
                .options([("search_path", schema.as_str())]);
            let mut c = sqlx::PgConnection::connect_with(&opts).await.unwrap();
            sqlx::query(statement).bind(id).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
        satchel::db::Backend::Sqlite => {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&t.app.cfg.database_url()).unwrap();
            let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            sqlx::query(statement).bind(id).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

/// Polls validations until `code` (another process's change travels by NOTIFY); returns how
/// long it took.
async fn until_code(t: &TestApp, key: &str, code: &str) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        let (_, v) = post(t, key, "validate", json!({"device_fingerprint": "d"})).await;
        if v["code"] == code {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}: still {} instead of {code}",
            t.backend,
            v["code"]
        );
        tokio::task::yield_now().await;
    }
}

/// Validations answer from an in-process cache; every change is still seen: at once on this
/// instance whichever module made it (seller API, a plain statement, another module's
/// transaction, a refund), from another process as soon as its NOTIFY is in (PostgreSQL) or
/// the change counter has been read (SQLite, every 2 ms), and (PostgreSQL) a listener outage
/// empties the cache so changes made meanwhile are not missed.
#[tokio::test]
async fn validations_see_every_license_change_with_the_cache_on() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let cached = t.license_cache_live().await;
        assert!(cached, "{backend:?}: the cache comes up on both backends");
        let hits = || t.app.licensing.cache.as_ref().map_or(0, |c| c.stats().0);
        let seller = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        let order = t.buy_paid("demo-app", "cache@example.com").await;
        let key = order["items"][0]["license_key"].as_str().unwrap().to_string();
        assert_eq!(
            post(&t, &key, "activate", json!({"device_fingerprint": "d"})).await.0,
            200
        );
        let (id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM license_keys WHERE license_key = $1", &key))
            .await
            .unwrap();
        let code = || async {
            let (_, v) = post(&t, &key, "validate", json!({"device_fingerprint": "d"})).await;
            v["code"].as_str().unwrap().to_string()
        };
        // VALID, and (PostgreSQL) answered from the cache again. The notification of a change
        // this process made arrives a moment after it and empties the cache once more, so
        // the first reads after a change may refill it twice.
        let warm = || async {
            let h = hits();
            for _ in 0..100 {
                assert_eq!(code().await, "VALID");
                if !cached || hits() > h {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("{backend:?}: never answered from the cache");
        };
        warm().await;

        // This instance, through the seller API: the very next validation sees it.
        // (Not left to the notification: the write itself is counted before the call returns.)
        let writes = satchel::db::cached_writes();
        assert_eq!(seller_action(&t, &seller, &id, "suspend").await, 200);
        assert!(satchel::db::cached_writes() > writes);
        assert_eq!(code().await, "SUSPENDED", "{backend:?}");
        assert_eq!(seller_action(&t, &seller, &id, "reinstate").await, 200);
        warm().await;

        // This instance, a plain statement and another module's transaction.
        let writes = satchel::db::cached_writes();
        t.app
            .db
            .execute(sql!("UPDATE license_keys SET status = 'suspended' WHERE id = $1", &id))
            .await
            .unwrap();
        assert!(satchel::db::cached_writes() > writes);
        assert_eq!(code().await, "SUSPENDED");
        t.app
            .db
            .execute(sql!("UPDATE license_keys SET status = 'active' WHERE id = $1", &id))
            .await
            .unwrap();
        warm().await;
        let tx = t.app.db.begin().await.unwrap();
        tx.execute(sql!(
            "UPDATE license_activations SET deactivated_at = 1 WHERE license_id = $1",
            &id
        ))
        .await
        .unwrap();
        tx.execute(sql!("UPDATE license_keys SET activations = 0 WHERE id = $1", &id))
            .await
            .unwrap();
        let writes = satchel::db::cached_writes();
        tx.commit().await.unwrap();
        assert!(satchel::db::cached_writes() > writes, "counted at commit");
        assert_eq!(code().await, "NOT_ACTIVATED");
        assert_eq!(
            post(&t, &key, "activate", json!({"device_fingerprint": "d"})).await.0,
            200
        );
        warm().await;

        // Another process: seen as soon as its notification is in.
        from_another_process(&t, "UPDATE license_keys SET status = 'revoked' WHERE id = $1", &id).await;
        let took = until_code(&t, &key, "REVOKED").await;
        eprintln!("{backend:?}: another process's revocation seen after {took:?}");
        from_another_process(&t, "UPDATE license_keys SET status = 'active' WHERE id = $1", &id).await;
        until_code(&t, &key, "VALID").await;
        warm().await;
        from_another_process(
            &t,
            "UPDATE license_activations SET deactivated_at = 1 WHERE license_id = $1",
            &id,
        )
        .await;
        until_code(&t, &key, "NOT_ACTIVATED").await;
        assert_eq!(
            post(&t, &key, "activate", json!({"device_fingerprint": "d"})).await.0,
            200
        );
        warm().await;

        // The listener's connection dies: a change made before it is back is not missed.
        if let Some(cache) = t
            .app
            .licensing
            .cache
            .as_ref()
            .filter(|_| backend == satchel::db::Backend::Postgres)
        {
            let (pid, reconnects) = (cache.listener_pid().unwrap(), cache.reconnects());
            let (ok,): (bool,) = t
                .app
                .db
                .fetch_one(sql!("SELECT pg_terminate_backend(CAST($1 AS INTEGER))", i64::from(pid)))
                .await
                .unwrap();
            assert!(ok);
            from_another_process(&t, "UPDATE license_keys SET status = 'revoked' WHERE id = $1", &id).await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while cache.reconnects() == reconnects || !cache.is_live() {
                assert!(std::time::Instant::now() < deadline, "the listener never came back");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(code().await, "REVOKED", "nothing stale survived the outage");
            from_another_process(&t, "UPDATE license_keys SET status = 'active' WHERE id = $1", &id).await;
            until_code(&t, &key, "VALID").await;
            warm().await;
        }

        // A refund (the refunds module's transaction) revokes at once.
        let tx = t.app.db.begin().await.unwrap();
        let req = satchel::refunds::RefundRequest {
            amount: None,
            reason: String::new(),
            items: vec![],
        };
        satchel::refunds::apply(&t.app, &tx, order["order_id"].as_str().unwrap(), &req, "seller", None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(code().await, "REVOKED", "{backend:?}");
    }
}

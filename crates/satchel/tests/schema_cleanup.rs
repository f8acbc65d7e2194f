//! The benchmark drops its stores' PostgreSQL schemas when it ends
//! (`testing::drop_schemas_made_here`). Its own test binary: the clean-up drops every schema
//! this process made, which would pull the floor from under tests running beside it.

#![allow(clippy::unwrap_used)]

use satchel::db::{Backend, Exec};
use satchel::sql;
use satchel::testing::{backends, drop_schemas_made_here, pg_admin_url, TestApp};

#[tokio::test]
async fn a_process_drops_the_schemas_it_made_and_no_other() {
    if !backends().await.contains(&Backend::Postgres) {
        return;
    }
    let admin = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    let exists = |name: String| {
        let admin = admin.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
                .bind(name)
                .fetch_one(&admin)
                .await
                .unwrap();
            n == 1
        }
    };
    // Someone else's schema, which must survive.
    let theirs = format!("t_{}_notmine", satchel::ids::now());
    sqlx::query(&format!("CREATE SCHEMA \"{theirs}\""))
        .execute(&admin)
        .await
        .unwrap();

    let t = TestApp::start_demo(Backend::Postgres).await;
    let (ours,): (String,) = t
        .app
        .db
        .fetch_one(sql!("SELECT CAST(current_schema() AS TEXT)"))
        .await
        .unwrap();
    // The store did real work in it: an order paid, its grant issued.
    let o = t.buy_paid("demo-templates", "cleanup@example.com").await;
    assert!(o["items"][0]["download_url"].is_string(), "{o}");
    drop(t);
    assert!(exists(ours.clone()).await);

    assert_eq!(drop_schemas_made_here().await, 1);
    assert!(!exists(ours).await, "the store's schema is gone");
    assert!(exists(theirs.clone()).await, "another process's schema is left alone");
    assert_eq!(drop_schemas_made_here().await, 0, "nothing twice");

    sqlx::query(&format!("DROP SCHEMA \"{theirs}\""))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

//! The store's logo: when the seller has one (`sellers.logo_key`), every storefront page shows
//! it in the header, served from storage at `/media/sellers/{id}/logo` — on local disk and on
//! a real S3-compatible server, SQLite and PostgreSQL. No logo: the name alone, and a 404.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, S3Server, TestApp};

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x60, 0xf8, 0x0f, 0x00, 0x01, 0x04, 0x01, 0x00, 0x5f, 0xe5, 0xc3, 0x4b,
    0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

async fn check(t: &TestApp) {
    let seller = t.demo_seller().await;
    // No logo yet: the store name alone, and the media route is a 404.
    let html = t.client.get(t.url("/")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("<a class=\"logo\" href=\"/\">") && !html.contains("logo-img"));
    let r = t
        .client
        .get(t.url(&format!("/media/sellers/{seller}/logo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let key = format!("{seller}/branding/logo.png");
    t.app
        .storage
        .put(&key, satchel::storage::bytes_stream(PNG.to_vec()), "image/png")
        .await
        .unwrap();
    t.app
        .db
        .execute(sql!("UPDATE sellers SET logo_key = $1 WHERE id = $2", &key, &seller))
        .await
        .unwrap();
    for path in ["/", "/products", "/p/demo-ebook", "/library", "/affiliate/login"] {
        let html = t.client.get(t.url(path)).send().await.unwrap().text().await.unwrap();
        assert!(
            html.contains(&format!("<img src=\"/media/sellers/{seller}/logo?v=")),
            "{:?} {path}",
            t.backend
        );
    }
    let html = t.client.get(t.url("/")).send().await.unwrap().text().await.unwrap();
    let src = html
        .split("<img src=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&");
    let r = t.client.get(t.url(&src)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await.unwrap().as_ref(), PNG);
    // Unknown seller, and a key whose object is gone: 404, not 500.
    assert_eq!(
        t.client
            .get(t.url("/media/sellers/sel_nope/logo"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    t.app
        .db
        .execute(sql!(
            "UPDATE sellers SET logo_key = 'x/missing.png' WHERE id = $1",
            &seller
        ))
        .await
        .unwrap();
    assert_eq!(
        t.client
            .get(t.url(&format!("/media/sellers/{seller}/logo")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn the_logo_shows_in_the_header_from_local_storage() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        check(&t).await;
    }
}

#[tokio::test]
async fn the_logo_shows_in_the_header_from_s3() {
    let Some(s3) = S3Server::start().await else { return };
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| s3.configure(c)).await;
        check(&t).await;
    }
}

//! Product preview images: checked by their bytes, stored with a 480 px thumbnail in object
//! storage (local and S3), listed in order in the product JSON and on the product page,
//! served at stable URLs, deletable (the cover moves on), and refused for strangers.

#![allow(clippy::unwrap_used)]

use satchel::testing::{backends, S3Server, TestApp};
use serde_json::{json, Value};

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, 40, (y % 256) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn form(parts: Vec<(&str, Vec<u8>)>) -> reqwest::multipart::Form {
    let mut f = reqwest::multipart::Form::new();
    for (name, bytes) in parts {
        f = f.part(
            "image",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
    }
    f
}

#[tokio::test]
async fn preview_images_with_thumbnails_in_order_and_the_first_is_the_cover() {
    let Some(s3) = S3Server::start().await else { return };
    for backend in backends().await {
        for on_s3 in [false, true] {
            let label = format!("{}/{}", backend.name(), if on_s3 { "s3" } else { "local" });
            let t = TestApp::start_with(backend, |c| {
                c.uploads.image_max_bytes = 2 * 1024 * 1024;
                if on_s3 {
                    s3.configure(c);
                }
            })
            .await;
            let (_, key) = t.seller_with_key("pics@example.com").await;
            let (_, rival) = t.seller_with_key("rival@example.com").await;
            let r = t
                .client
                .post(t.url("/api/v1/products"))
                .bearer_auth(&key)
                .json(&json!({"title": "Pictures", "slug": "pictures", "price": 500, "currency": "USD", "status": "published"}))
                .send()
                .await
                .unwrap();
            let pid = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
            let path = format!("/api/v1/products/{pid}/images");
            let first = png(1200, 800);
            let second = jpeg(300, 200);

            let r = t
                .client
                .post(t.url(&path))
                .bearer_auth(&key)
                .multipart(form(vec![("a.png", first.clone()), ("b.jpg", second.clone())]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{label}");
            let added: Value = r.json().await.unwrap();
            let items = added["items"].as_array().unwrap().clone();
            assert_eq!(items.len(), 2);
            assert_eq!(
                (items[0]["width"].as_i64(), items[0]["height"].as_i64()),
                (Some(1200), Some(800))
            );
            assert_eq!(
                (items[0]["thumb_width"].as_i64(), items[0]["thumb_height"].as_i64()),
                (Some(480), Some(320))
            );
            assert_eq!(items[1]["thumb_width"], 300, "{label}: small images are not enlarged");

            // The product JSON lists them in order; the first is the cover.
            let p: Value = t
                .client
                .get(t.url("/api/v1/products/pictures"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let imgs = p["images"].as_array().unwrap();
            assert_eq!(imgs.len(), 2, "{label}");
            assert_eq!(imgs[0]["id"], items[0]["id"]);
            assert_eq!(imgs[1]["id"], items[1]["id"]);
            let url0 = imgs[0]["url"].as_str().unwrap().to_string();
            let r = t.client.get(t.url(&url0)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{label}");
            assert_eq!(r.headers()["content-type"], "image/png");
            assert_eq!(
                r.bytes().await.unwrap().to_vec(),
                first,
                "{label}: the original, byte for byte"
            );
            let thumb = t
                .client
                .get(t.url(imgs[0]["thumb_url"].as_str().unwrap()))
                .send()
                .await
                .unwrap();
            assert_eq!(
                thumb.headers()["content-type"],
                "image/png",
                "{label}: transparency keeps PNG"
            );
            let decoded = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (480, 320));
            let thumb1 = t
                .client
                .get(t.url(imgs[1]["thumb_url"].as_str().unwrap()))
                .send()
                .await
                .unwrap();
            assert_eq!(thumb1.headers()["content-type"], "image/jpeg");
            assert!(p["cover_url"].is_string(), "{label}");
            let cover = t
                .client
                .get(t.url(p["cover_url"].as_str().unwrap()))
                .send()
                .await
                .unwrap();
            assert_eq!(
                cover.bytes().await.unwrap().to_vec(),
                first,
                "{label}: first image is the cover"
            );

            // The product page shows the thumbnails.
            let html = t
                .client
                .get(t.url("/p/pictures"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let i0 = html
                .find(imgs[0]["thumb_url"].as_str().unwrap())
                .expect("first thumbnail on the page");
            let i1 = html
                .find(imgs[1]["thumb_url"].as_str().unwrap())
                .expect("second thumbnail on the page");
            assert!(i0 < i1, "{label}: in order");

            // Bad input: not an image by its bytes (whatever the name), corrupt, too big, a stranger.
            let r = t
                .client
                .post(t.url(&path))
                .bearer_auth(&key)
                .multipart(form(vec![("evil.png", b"<svg onload=alert(1)>".to_vec())]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 415, "{label}");
            let mut broken = first.clone();
            broken.truncate(200);
            let r = t
                .client
                .post(t.url(&path))
                .bearer_auth(&key)
                .multipart(form(vec![("broken.png", broken)]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 422, "{label}");
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_image");
            let mut big = png(8, 8);
            big.resize(2 * 1024 * 1024 + 1, 0);
            let r = t
                .client
                .post(t.url(&path))
                .bearer_auth(&key)
                .multipart(form(vec![("big.png", big)]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 413, "{label}");
            let r = t
                .client
                .post(t.url(&path))
                .bearer_auth(&rival)
                .multipart(form(vec![("c.png", png(10, 10))]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{label}: not the rival's product");
            let id0 = imgs[0]["id"].as_str().unwrap();
            let r = t
                .client
                .delete(t.url(&format!("{path}/{id0}")))
                .bearer_auth(&rival)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{label}");
            let p2: Value = t
                .client
                .get(t.url("/api/v1/products/pictures"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(p2["images"].as_array().unwrap().len(), 2, "{label}: nothing changed");

            // Deleting the cover image moves the cover to the next image; its URLs are gone.
            let r = t
                .client
                .delete(t.url(&format!("{path}/{id0}")))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
            assert_eq!(t.client.get(t.url(&url0)).send().await.unwrap().status(), 404);
            let cover = t
                .client
                .get(t.url(&format!("/media/products/{pid}/cover")))
                .send()
                .await
                .unwrap();
            assert_eq!(cover.headers()["content-type"], "image/jpeg", "{label}");
            assert_eq!(cover.bytes().await.unwrap().to_vec(), second);
            let id1 = imgs[1]["id"].as_str().unwrap();
            assert_eq!(
                t.client
                    .delete(t.url(&format!("{path}/{id1}")))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status(),
                204
            );
            let p3: Value = t
                .client
                .get(t.url("/api/v1/products/pictures"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(p3["cover_url"].is_null(), "{label}: no images, no cover");
            assert_eq!(p3["images"], json!([]));
        }
    }
}

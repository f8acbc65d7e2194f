//! `satchel serve --demo`: a working store with one seller and a product of every kind,
//! seeded once and idempotently (each product is created only if its slug is missing).
//! Every sample file is generated here (`satchel-media`), never downloaded.

use crate::app::App;
use crate::catalog::{self, DownloadPolicy, LicensePolicy, NewFile, NewProduct};
use crate::db::Exec;
use crate::storage::bytes_stream;

pub const DEMO_EMAIL: &str = "demo@satchel.test";
pub const DEMO_PASSWORD: &str = "demo-password";

struct DemoProduct {
    slug: &'static str,
    title: &'static str,
    summary: &'static str,
    description: &'static str,
    price: i64,
    kind: &'static str,
    category: &'static str,
    tags: &'static [&'static str],
    license: LicensePolicy,
    max_downloads: i64,
    watermark: &'static str,
    accent: &'static str,
    file_name: &'static str,
    content_type: &'static str,
    featured: bool,
}

fn products() -> Vec<DemoProduct> {
    vec![
        DemoProduct {
            slug: "demo-ebook",
            title: "The Indie Maker's Handbook",
            summary: "A practical PDF guide to shipping and selling your first digital product.",
            description: "# The Indie Maker's Handbook\n\nThirty pages on pricing, launching and keeping buyers happy.\n\n- Pricing that respects your work\n- Launch checklists\n- Support without burnout\n\nEvery copy is stamped with the buyer's name.",
            price: 1900,
            kind: "one_time",
            category: "ebooks",
            tags: &["pdf", "business", "guide"],
            license: LicensePolicy::None,
            max_downloads: 5,
            watermark: "stamp",
            accent: "#5b4bdb",
            file_name: "indie-makers-handbook.pdf",
            content_type: "application/pdf",
            featured: true,
        },
        DemoProduct {
            slug: "demo-templates",
            title: "Notion Life OS Templates",
            summary: "A ZIP of planning templates: weekly review, habit tracker, project board.",
            description: "## What's inside\n\n| Template | Format |\n|---|---|\n| Weekly review | Markdown |\n| Habit tracker | CSV |\n| Project board | HTML |\n\nImport into Notion, Obsidian or any editor.",
            price: 2900,
            kind: "one_time",
            category: "templates",
            tags: &["notion", "productivity", "zip"],
            license: LicensePolicy::None,
            max_downloads: 5,
            watermark: "none",
            accent: "#0f9d76",
            file_name: "life-os-templates.zip",
            content_type: "application/zip",
            featured: true,
        },
        DemoProduct {
            slug: "demo-app",
            title: "Pixel Polish (desktop app)",
            summary: "A desktop utility with a perpetual license for up to 3 devices.",
            description: "Pixel Polish cleans up screenshots in one click.\n\nYour license key activates on **3 devices**; deactivate one any time from your library.",
            price: 4900,
            kind: "one_time",
            category: "software",
            tags: &["app", "desktop", "license"],
            license: LicensePolicy::Perpetual { max_activations: 3, term_days: None, key_prefix: Some("PXL".into()) },
            max_downloads: 10,
            watermark: "none",
            accent: "#e8590c",
            file_name: "pixel-polish.zip",
            content_type: "application/zip",
            featured: true,
        },
        DemoProduct {
            slug: "demo-single",
            title: "Font Pack Serial",
            summary: "A single-use serial code: consumed by its first activation.",
            description: "One serial, one activation. Ideal for installers and redeemable content.",
            price: 990,
            kind: "one_time",
            category: "software",
            tags: &["serial", "license"],
            license: LicensePolicy::SingleUse { term_days: None, key_prefix: Some("FNT".into()) },
            max_downloads: 5,
            watermark: "none",
            accent: "#c2255c",
            file_name: "font-pack-installer.zip",
            content_type: "application/zip",
            featured: false,
        },
        DemoProduct {
            slug: "demo-pro",
            title: "Pixel Polish Pro (monthly)",
            summary: "Monthly subscription: every update while subscribed, license checks in daily.",
            description: "Pro adds batch processing and presets.\n\nThe license stays valid while your subscription is paid, with a **7-day offline grace**.",
            price: 900,
            kind: "subscription",
            category: "software",
            tags: &["app", "subscription", "license"],
            license: LicensePolicy::Subscription { check_in_hours: 24, grace_days: 7, key_prefix: Some("PRO".into()) },
            max_downloads: 20,
            watermark: "none",
            accent: "#1971c2",
            file_name: "pixel-polish-pro.zip",
            content_type: "application/zip",
            featured: false,
        },
        DemoProduct {
            slug: "demo-free",
            title: "Pricing Cheat Sheet (free)",
            summary: "A free one-page PDF — just leave your email.",
            description: "A free sampler. Enter your email and the PDF is yours.",
            price: 0,
            kind: "one_time",
            category: "ebooks",
            tags: &["pdf", "free"],
            license: LicensePolicy::None,
            max_downloads: 5,
            watermark: "none",
            accent: "#2b8a3e",
            file_name: "pricing-cheat-sheet.pdf",
            content_type: "application/pdf",
            featured: true,
        },
        DemoProduct {
            slug: "demo-album",
            title: "Lo-fi Sketches (album)",
            summary: "Royalty-free WAV loops, each copy carries an inaudible buyer mark.",
            description: "Warm, short lo-fi sketches for videos and podcasts. 44.1 kHz WAV.",
            price: 1200,
            kind: "one_time",
            category: "music",
            tags: &["audio", "wav", "music"],
            license: LicensePolicy::None,
            max_downloads: 5,
            watermark: "stamp",
            accent: "#7048e8",
            file_name: "lofi-sketches.wav",
            content_type: "audio/wav",
            featured: true,
        },
    ]
}

fn file_bytes(slug: &str, title: &str) -> Vec<u8> {
    use crate::demo_files as demo;
    match slug {
        "demo-ebook" | "demo-free" => demo::ebook_pdf(title),
        "demo-templates" => demo::templates_zip(),
        "demo-album" => demo::album_wav(),
        _ => demo::app_zip(),
    }
}

/// Seeds the demo seller and products. Returns the number of products created now.
pub async fn seed(app: &App) -> anyhow::Result<usize> {
    let seller_id = match crate::accounts::find_user(&app.db, DEMO_EMAIL).await? {
        Some(u) => u
            .seller_id
            .ok_or_else(|| anyhow::anyhow!("{DEMO_EMAIL} exists but is not a seller"))?,
        None => {
            let tx = app.db.begin().await?;
            let (seller, _) =
                crate::accounts::create_seller_account(&tx, DEMO_EMAIL, DEMO_PASSWORD, "Satchel Demo Store", "admin")
                    .await
                    .map_err(|e| anyhow::anyhow!("creating demo seller: {e:?}"))?;
            tx.commit().await?;
            seller.id
        }
    };
    let mut created = 0;
    for d in products() {
        if catalog::find_product(&app.db, d.slug).await?.is_some() {
            continue;
        }
        let tx = app.db.begin().await?;
        let p = catalog::create_product(
            &tx,
            &seller_id,
            NewProduct {
                title: d.title.into(),
                slug: Some(d.slug.into()),
                summary: d.summary.into(),
                description: d.description.into(),
                price: d.price,
                currency: "USD".into(),
                kind: d.kind.into(),
                billing_interval: (d.kind == "subscription").then(|| "month".to_string()),
                pwyw_min: None,
                category: d.category.into(),
                tags: d.tags.iter().map(|t| (*t).to_string()).collect(),
                license_policy: d.license.clone(),
                download_policy: DownloadPolicy {
                    max_downloads: d.max_downloads,
                    ..DownloadPolicy::default()
                },
                watermark_policy: d.watermark.into(),
                status: "published".into(),
                featured: d.featured,
                bundle_products: Vec::new(),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating demo product {}: {e:?}", d.slug))?;
        let bytes = file_bytes(d.slug, d.title);
        let key = catalog::original_key(&seller_id, &p.id, "1.0.0", d.file_name);
        let put = app.storage.put(&key, bytes_stream(bytes), d.content_type).await?;
        let cover_key = format!("{seller_id}/{}/cover.svg", p.id);
        app.storage
            .put(
                &cover_key,
                bytes_stream(crate::demo_files::cover_svg(d.title, d.accent).into_bytes()),
                "image/svg+xml",
            )
            .await?;
        tx.execute(crate::sql!(
            "UPDATE products SET cover_key = $1 WHERE id = $2",
            &cover_key,
            &p.id
        ))
        .await?;
        catalog::insert_version(
            &tx,
            &p.id,
            "1.0.0",
            "First release.",
            &[NewFile {
                name: d.file_name.into(),
                object_key: key,
                size: i64::try_from(put.size)?,
                sha256: put.sha256,
                content_type: d.content_type.into(),
            }],
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating demo version for {}: {e:?}", d.slug))?;
        tx.commit().await?;
        created += 1;
    }
    Ok(created)
}

//! Catalog at scale: loads N synthetic products (batched multi-row INSERTs in transactions;
//! the FTS5 triggers / generated tsvector keep search indexed as rows land), then measures
//! `GET /api/v1/products?q=…` and a page deep in the listing (cursor) over HTTP, each beside
//! the very same SQL run directly on the pool in the same run. Every query's plan is checked
//! with EXPLAIN: a plan that scans the products table is reported.

use std::time::{Duration, Instant};

use satchel::catalog::ListParams;
use satchel::db::{Backend, Exec, Query};
use satchel::testing::TestApp;

use crate::Row;

/// Words titles are made of; the first ones are common, the last rare (a Zipf-like draw).
const WORDS: &[&str] = &[
    "guide",
    "template",
    "pack",
    "course",
    "ebook",
    "preset",
    "font",
    "icon",
    "music",
    "theme",
    "plugin",
    "photo",
    "video",
    "design",
    "starter",
    "kit",
    "bundle",
    "pro",
    "lite",
    "studio",
    "vintage",
    "modern",
    "minimal",
    "retro",
    "cinematic",
    "lofi",
    "synthwave",
    "watercolor",
    "notion",
    "figma",
    "lightroom",
    "procreate",
    "blender",
    "unity",
    "godot",
    "rust",
    "python",
    "kotlin",
    "swift",
    "svelte",
    "budget",
    "planner",
    "journal",
    "recipe",
    "yoga",
    "chess",
    "origami",
    "calligraphy",
    "bonsai",
    "astronomy",
    "quilting",
    "woodworking",
    "sourdough",
    "kombucha",
    "beekeeping",
    "typography",
    "illustration",
    "animation",
    "podcast",
    "mixing",
    "mastering",
    "sample",
    "loop",
    "drum",
    "piano",
    "guitar",
    "violin",
    "ambient",
    "techno",
    "house",
    "jazz",
    "folk",
    "poster",
    "mockup",
    "wallpaper",
    "sticker",
    "pattern",
    "texture",
    "brush",
    "shader",
    "sprite",
    "tileset",
    "voxel",
    "lowpoly",
    "isometric",
    "pixel",
    "cursor",
    "emoji",
    "glyph",
    "serif",
    "sans",
    "mono",
    "script",
    "display",
    "grotesk",
    "humanist",
    "geometric",
    "slab",
];
const CATEGORIES: &[&str] = &[
    "Ebooks",
    "Templates",
    "Music",
    "Software",
    "Courses",
    "Fonts",
    "Graphics",
    "Photos",
];

/// A small deterministic generator (no dependency, same data every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    /// Index into WORDS, skewed to the front.
    fn word(&mut self) -> &'static str {
        let a = self.next() % WORDS.len() as u64;
        let b = self.next() % WORDS.len() as u64;
        WORDS[usize::try_from(a.min(b)).unwrap_or(0)]
    }
}

const COLS: usize = 14;

/// Inserts `n` published products (every 50th a draft) for a few sellers; returns seconds.
async fn load(t: &TestApp, n: usize) -> anyhow::Result<f64> {
    let mut sellers = Vec::new();
    for i in 0..10 {
        let (s, _) = satchel::accounts::create_seller_account(
            &t.app.db,
            &format!("bulk{i}@example.com"),
            "password123",
            &format!("Bulk {i}"),
            "seller",
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        sellers.push(s.id);
    }
    let started = Instant::now();
    let mut rng = Lcg(42);
    let per_stmt = 1000;
    let per_tx = 20;
    let mut i = 0;
    let now = satchel::ids::now();
    while i < n {
        let tx = t.app.db.begin().await?;
        for _ in 0..per_tx {
            if i >= n {
                break;
            }
            let rows = per_stmt.min(n - i);
            let mut q = Query::new(
                "INSERT INTO products (id, seller_id, slug, title, summary, description_md, price, currency, kind, category, tags, \
                 status, created_at, updated_at) VALUES "
                    .to_string(),
            );
            for r in 0..rows {
                let k = i + r;
                let title = format!("{} {} {} {k}", rng.word(), rng.word(), rng.word());
                let tags = format!("{} {}", rng.word(), rng.word());
                let status = if k % 50 == 0 { "draft" } else { "published" };
                let vals = [
                    q.arg(satchel::ids::new_id("prd")),
                    q.arg(sellers[k % sellers.len()].as_str()),
                    q.arg(format!("bulk-{k}")),
                    q.arg(title),
                    q.arg(format!("A {} for {} people", rng.word(), rng.word())),
                    q.arg(format!("Everything about {} and {}.", rng.word(), rng.word())),
                    q.arg(i64::try_from(100 + k % 9000)?),
                    q.arg("USD"),
                    q.arg("one_time"),
                    q.arg(CATEGORIES[k % CATEGORIES.len()]),
                    q.arg(tags),
                    q.arg(status),
                    q.arg(now),
                    q.arg(now),
                ];
                debug_assert_eq!(vals.len(), COLS);
                q.push_sql(&format!("{}({})", if r == 0 { "" } else { ", " }, vals.join(", ")));
            }
            tx.execute(q).await?;
            i += rows;
        }
        tx.commit().await?;
        if i % 100_000 < per_stmt * per_tx {
            eprintln!("  loaded {i} products ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
    if t.app.db.backend() == Backend::Postgres {
        // What autovacuum does soon after a bulk load: statistics, and the GIN pending list
        // merged into the index (until then every search reads that list).
        t.app.db.execute(Query::new("VACUUM ANALYZE products")).await?;
    } else {
        t.app.db.execute(Query::new("ANALYZE")).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn pct(lat: &mut [Duration], p: f64) -> f64 {
    lat.sort();
    let i = ((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1));
    lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The query plan, one line per step.
async fn explain(t: &TestApp, q: &Query) -> anyhow::Result<Vec<String>> {
    let mut e = q.clone();
    Ok(match t.app.db.backend() {
        Backend::Sqlite => {
            e.sql = format!("EXPLAIN QUERY PLAN {}", q.sql).into();
            let rows: Vec<(i64, i64, i64, String)> = t.app.db.fetch_all(e).await?;
            rows.into_iter().map(|r| r.3).collect()
        }
        Backend::Postgres => {
            e.sql = format!("EXPLAIN {}", q.sql).into();
            let rows: Vec<(String,)> = t.app.db.fetch_all(e).await?;
            rows.into_iter().map(|r| r.0).collect()
        }
    })
}

/// A full pass over the products table in a plan (an index range or FTS lookup is fine).
fn scans_table(plan: &[String]) -> bool {
    plan.iter().any(|l| {
        let l = l.trim();
        l.contains("Seq Scan on products") || l == "SCAN p" || l == "SCAN products"
    })
}

struct Measured {
    http: Vec<Duration>,
    sql: Vec<Duration>,
    plans_scanning: usize,
    rows: usize,
}

async fn measure(t: &TestApp, cases: &[ListParams], rounds: usize) -> anyhow::Result<Measured> {
    let client = reqwest::Client::new();
    let mut m = Measured {
        http: Vec::new(),
        sql: Vec::new(),
        plans_scanning: 0,
        rows: 0,
    };
    for p in cases {
        let queries = satchel::catalog::list_plan(t.app.db.backend(), p, None)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .queries();
        for q in &queries {
            let plan = explain(t, q).await?;
            if std::ptr::eq(p, &cases[0]) {
                eprintln!("  plan for {:?}/{:?}:\n    {}", p.q, p.cursor, plan.join("\n    "));
            }
            if scans_table(&plan) {
                m.plans_scanning += 1;
                eprintln!(
                    "  plan scans the table for {:?}/{:?}:\n    {}",
                    p.q,
                    p.cursor,
                    plan.join("\n    ")
                );
            }
        }
    }
    let mut per_case: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (ci, p) in cases.iter().enumerate() {
            let mut url = format!("{}/api/v1/products?limit=20", t.base_url);
            if let Some(q) = &p.q {
                url.push_str(&format!("&q={q}"));
            }
            if let Some(c) = &p.cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let t0 = Instant::now();
            let r = client.get(&url).send().await?;
            anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
            let body: serde_json::Value = r.json().await?;
            m.http.push(t0.elapsed());
            if round == 0 {
                m.rows += body["items"].as_array().map_or(0, Vec::len);
            }
            // The reference: the same statements on the pool, without HTTP and JSON.
            let t0 = Instant::now();
            let (rows, _) = satchel::catalog::list_products(&t.app.db, p, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            m.sql.push(t0.elapsed());
            per_case[ci].push(t0.elapsed());
            anyhow::ensure!(rows.len() <= 20);
        }
    }
    for (p, lat) in cases.iter().zip(per_case.iter_mut()) {
        let (p50, max) = (pct(lat, 0.5), pct(lat, 1.0));
        eprintln!("  SQL {:?}/{:?}: p50 {p50:.2} ms, max {max:.2} ms", p.q, p.cursor);
    }
    Ok(m)
}

pub async fn run(backend: Backend, products: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let db = backend.name();
    let t = TestApp::start_with(backend, |c| c.database.max_connections = 8).await;
    eprintln!("loading {products} products into {db}…");
    let secs = load(&t, products).await?;
    rows.push(Row {
        what: format!("catalog load ({db}, {products} products, FTS maintained)"),
        satchel: format!("{secs:.1} s ({:.0} rows/s)", products as f64 / secs),
        reference: "batched 1000-row INSERTs, 20 per transaction".into(),
        ratio: "-".into(),
    });

    // Search: common, middling, rare and two-word queries.
    let words = [
        "guide",
        "pack",
        "music",
        "figma",
        "sourdough",
        "grotesk",
        "slab",
        "pixel art",
        "retro font",
        "zzzz",
    ];
    let search: Vec<ListParams> = words
        .iter()
        .map(|w| ListParams {
            q: Some((*w).to_string()),
            ..ListParams::default()
        })
        .collect();
    let mut s = measure(&t, &search, 30).await?;
    rows.push(Row {
        what: format!("GET /api/v1/products?q=… ({db}, {products}, {} queries)", s.http.len()),
        satchel: format!(
            "p50 {:.2} ms p99 {:.2} ms",
            pct(&mut s.http, 0.5),
            pct(&mut s.http, 0.99)
        ),
        reference: format!(
            "same SQL on the pool p50 {:.2} ms p99 {:.2} ms; table scans in plans: {}",
            pct(&mut s.sql, 0.5),
            pct(&mut s.sql, 0.99),
            s.plans_scanning
        ),
        ratio: format!(
            "goal p99 < 50 ms: {}",
            if pct(&mut s.http, 0.99) < 50.0 {
                "met"
            } else {
                "NOT met"
            }
        ),
    });

    // Deep pages: cursors 50–95 % of the way down the listing.
    let mut deep = Vec::new();
    for frac in [50, 60, 70, 80, 90, 95] {
        let offset = i64::try_from(products * frac / 100)?;
        let (id,): (String,) = t
            .app
            .db
            .fetch_one(satchel::sql!(
                "SELECT id FROM products WHERE status = 'published' ORDER BY id DESC LIMIT 1 OFFSET $1",
                offset
            ))
            .await?;
        deep.push(ListParams {
            cursor: Some(id),
            ..ListParams::default()
        });
    }
    let mut d = measure(&t, &deep, 50).await?;
    anyhow::ensure!(d.rows == deep.len() * 20, "deep pages are full pages");
    rows.push(Row {
        what: format!("deep page (cursor at 50–95 %) ({db}, {products})"),
        satchel: format!(
            "p50 {:.2} ms p99 {:.2} ms",
            pct(&mut d.http, 0.5),
            pct(&mut d.http, 0.99)
        ),
        reference: format!(
            "same SQL on the pool p50 {:.2} ms p99 {:.2} ms; table scans in plans: {}",
            pct(&mut d.sql, 0.5),
            pct(&mut d.sql, 0.99),
            d.plans_scanning
        ),
        ratio: format!(
            "goal p99 < 50 ms: {}",
            if pct(&mut d.http, 0.99) < 50.0 {
                "met"
            } else {
                "NOT met"
            }
        ),
    });
    Ok(())
}

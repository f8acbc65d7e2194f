//! Satchel: a self-hosted digital downloads store.
//!
//! One binary, two shapes (embedded: SQLite + local files; scaled out: PostgreSQL + S3),
//! chosen by configuration only. Rooms of the house:
//!
//! - [`config`]: typed configuration, defaults → TOML file → `SATCHEL_*` environment.
//! - [`db`]: one query code path for SQLite and PostgreSQL, migrations, models.
//! - [`storage`]: object storage behind one small interface (local directory | S3).
//! - [`jobs`]: the table-backed job queue, enqueued inside business transactions.
//! - [`keys`]: signing keys (download MACs, Ed25519 license signing) with key ids.
//! - [`http`]: axum routes, extractors, error contract, metrics.
//! - domain modules: [`catalog`], [`demo`].

pub mod abuse;
pub mod accounts;
pub mod affiliate_portal;
pub mod affiliates;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod checkout;
pub mod config;
pub mod db;
pub mod delivery;
pub mod demo;
pub mod demo_files;
pub mod error;
pub mod grants;
pub mod http;
pub mod ids;
pub mod images;
pub mod invoices;
pub mod jobs;
pub mod keys;
pub mod library;
pub mod licensing;
pub mod mail;
pub mod markdown;
pub mod payments;
pub mod reconcile;
pub mod refunds;
pub mod reviews;
pub mod scheduler;
pub mod storage;
pub mod subscriptions;
pub mod testing;
pub mod upload_client;
pub mod uploads;
pub mod versions;
pub mod watermark;

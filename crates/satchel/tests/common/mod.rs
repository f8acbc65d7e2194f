//! Helpers shared by the integration tests that need them (`mod common;`).

#![allow(dead_code)]

pub mod browser;
pub mod dashboard;

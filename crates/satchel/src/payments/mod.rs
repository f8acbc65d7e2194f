//! Payments: the Stripe webhook contract (verification, deduplication, dispatch to the
//! domain). Test mode drives the same domain functions from the TEST MODE checkout page.

pub mod stripe_client;
pub mod stripe_webhook;

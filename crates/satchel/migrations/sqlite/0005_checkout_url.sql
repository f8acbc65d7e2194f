-- Where the buyer pays: Stripe's hosted Checkout URL for Stripe orders.
ALTER TABLE orders ADD COLUMN checkout_url TEXT;

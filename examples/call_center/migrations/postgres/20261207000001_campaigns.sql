-- The campaigns table. IF NOT EXISTS: a database created by an earlier version of the example
-- (which ran this statement by hand) adopts this migration instead of failing on it.
CREATE TABLE IF NOT EXISTS campaigns (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

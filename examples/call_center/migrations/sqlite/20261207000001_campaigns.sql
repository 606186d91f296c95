-- The campaigns table on the embedded in-memory SQLite (same columns as PostgreSQL's, in
-- SQLite's types: an AUTOINCREMENT key, a text timestamp).
CREATE TABLE IF NOT EXISTS campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- The naive baseline's own schema (benchmarks/naive; not part of payportal).
-- Money in integer minor units. One row per account holds its running balance.
CREATE TABLE api_keys (
    key_hash   text PRIMARY KEY,  -- SHA-256 hex of the bearer key
    name       text NOT NULL,
    revoked_at timestamptz
);

CREATE TABLE accounts (
    id                text PRIMARY KEY,
    currency          text NOT NULL,
    outstanding_minor bigint NOT NULL DEFAULT 0,
    credit_minor      bigint NOT NULL DEFAULT 0
);

CREATE TABLE payment_methods (
    id         text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    token      text NOT NULL  -- the processor's token, never card data
);

CREATE TABLE invoices (
    id           text PRIMARY KEY,
    account_id   text NOT NULL REFERENCES accounts (id),
    due_date     date NOT NULL,
    amount_minor bigint NOT NULL,
    paid_minor   bigint NOT NULL DEFAULT 0,
    status       text NOT NULL DEFAULT 'open'
);
CREATE INDEX invoices_open_by_due ON invoices (account_id, due_date, id) WHERE status = 'open';

CREATE TABLE payments (
    id              text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (id),
    idempotency_key text NOT NULL,
    amount_minor    bigint NOT NULL,
    currency        text NOT NULL,
    status          text NOT NULL,
    payment_method  text NOT NULL,
    charge_id       text NOT NULL,
    applied_minor   bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, idempotency_key)
);

CREATE TABLE allocations (
    payment_id   text NOT NULL REFERENCES payments (id),
    invoice_id   text NOT NULL REFERENCES invoices (id),
    amount_minor bigint NOT NULL,
    PRIMARY KEY (payment_id, invoice_id)
);

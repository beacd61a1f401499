-- A database that exercises what a backup must carry over: roles, schemas, types,
-- identity/serial/generated columns, partitions, circular foreign keys, triggers, RLS,
-- views, materialized views, large objects, extensions, odd identifiers and odd text.
CREATE ROLE crm_owner LOGIN PASSWORD 'owner-pw' CREATEDB;
CREATE ROLE crm_reader LOGIN PASSWORD 'reader-pw' CONNECTION LIMIT 5;
CREATE ROLE crm_group NOLOGIN;
GRANT crm_group TO crm_reader;
COMMENT ON ROLE crm_reader IS 'read-only CRM user';

CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;

CREATE SCHEMA crm AUTHORIZATION crm_owner;
CREATE SCHEMA audit;
CREATE SCHEMA "Odd Schema";
COMMENT ON SCHEMA crm IS 'customer relationship data';

CREATE TYPE crm.deal_stage AS ENUM ('lead', 'qualified', 'won', 'lost');
CREATE DOMAIN crm.email AS citext CHECK (VALUE ~ '@');

CREATE TABLE crm.companies (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    main_contact_id bigint,
    tags hstore,
    created_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
CREATE TABLE crm.contacts (
    id serial PRIMARY KEY,
    company_id bigint REFERENCES crm.companies (id),
    first_name text,
    last_name text,
    full_name text GENERATED ALWAYS AS (coalesce(first_name, '') || ' ' || coalesce(last_name, '')) STORED,
    email crm.email,
    secret bytea
);
-- Circular foreign keys: companies -> contacts -> companies.
ALTER TABLE crm.companies ADD CONSTRAINT companies_main_contact_fk
    FOREIGN KEY (main_contact_id) REFERENCES crm.contacts (id) DEFERRABLE INITIALLY DEFERRED;
COMMENT ON TABLE crm.contacts IS 'people at companies';
COMMENT ON COLUMN crm.contacts.email IS 'unique per person';
CREATE UNIQUE INDEX contacts_email_idx ON crm.contacts (email);

CREATE TABLE crm.deals (
    id bigserial,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    stage crm.deal_stage NOT NULL DEFAULT 'lead',
    amount numeric(12, 2) CHECK (amount >= 0),
    closed_on date NOT NULL,
    PRIMARY KEY (id, closed_on)
) PARTITION BY RANGE (closed_on);
CREATE TABLE crm.deals_2024 PARTITION OF crm.deals FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE crm.deals_2025 PARTITION OF crm.deals FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');

-- An audit trigger writing to another table: a restore must not fire it (no extra rows).
CREATE TABLE audit.log (id bigserial PRIMARY KEY, tbl text, op text, row_data jsonb);
CREATE FUNCTION audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.log (tbl, op, row_data) VALUES (TG_TABLE_NAME, TG_OP, to_jsonb(NEW));
    RETURN NEW;
END $$;
CREATE TRIGGER contacts_audit AFTER INSERT OR UPDATE ON crm.contacts
    FOR EACH ROW EXECUTE FUNCTION audit.record();

ALTER TABLE crm.deals_2024 ENABLE ROW LEVEL SECURITY;
CREATE POLICY deals_reader ON crm.deals_2024 FOR SELECT TO crm_reader USING (amount < 1000);

CREATE TABLE "Odd Schema"."Mixed Case ""Table""" (
    "select" int PRIMARY KEY,
    "column with space" text,
    "ünïcödé" text
);

CREATE VIEW crm.contact_names AS SELECT id, full_name FROM crm.contacts;
CREATE MATERIALIZED VIEW crm.deal_totals AS
    SELECT company_id, count(*) AS deals, sum(amount) AS total FROM crm.deals GROUP BY company_id;

CREATE TABLE crm.documents (id int PRIMARY KEY, title text, content oid);

GRANT USAGE ON SCHEMA crm TO crm_group;
GRANT SELECT ON ALL TABLES IN SCHEMA crm TO crm_group;
GRANT SELECT (id, full_name) ON crm.contacts TO crm_reader;
ALTER TABLE crm.deals OWNER TO crm_owner;

-- Data.
BEGIN;
SET CONSTRAINTS ALL DEFERRED;
INSERT INTO crm.companies (name, main_contact_id, tags)
    SELECT 'Company ' || i, i, hstore('size', (i % 3)::text) FROM generate_series(1, 200) i;
INSERT INTO crm.contacts (company_id, first_name, last_name, email, secret)
    SELECT i, 'First' || i, 'Last' || i, 'person' || i || '@example.com', gen_random_bytes(16)
    FROM generate_series(1, 200) i;
COMMIT;
INSERT INTO crm.contacts (company_id, first_name, last_name, email) VALUES
    (1, E'tab\there', E'new\nline', 'odd1@example.com'),
    (2, E'back\\slash', '\N', 'odd2@example.com'),
    (3, E'literal \\N and \\.', 'ünïcödé ✓ 日本語 🎉', 'odd3@example.com'),
    (4, NULL, E'\r\n crlf', 'odd4@example.com'),
    (5, '\.', E'\\.', 'odd5@example.com');
INSERT INTO crm.deals (company_id, stage, amount, closed_on)
    SELECT 1 + i % 200, (ARRAY['lead','qualified','won','lost']::crm.deal_stage[])[1 + i % 4],
           (i * 37 % 5000)::numeric / 3, date '2024-01-01' + (i % 700)
    FROM generate_series(1, 3000) i;
INSERT INTO "Odd Schema"."Mixed Case ""Table""" VALUES (1, 'a b', 'ß'), (2, NULL, E'x\ty');
INSERT INTO crm.documents VALUES
    (1, 'contract', lo_from_bytea(0, convert_to('large object one', 'UTF8'))),
    (2, 'scan', lo_from_bytea(0, decode(repeat('00ff10', 30000), 'hex')));
REFRESH MATERIALIZED VIEW crm.deal_totals;
SELECT setval('crm.contacts_id_seq', 1000);
-- Rows the audit trigger wrote while loading: a restore must bring exactly these back.
ANALYZE;

-- The roles of a local Supabase database, written for pgvault's tests from the facts of
-- Supabase's public init scripts and migrations (not copied from them). Run once per
-- cluster, as the bootstrap superuser `supabase_admin` (initdb -U supabase_admin).
--
-- Stand-ins for the supautils library, which stock PostgreSQL lacks:
--  * its privileged_role_allowed_configs: GRANT SET ON PARAMETER session_replication_role;
--  * its policy_grants / drop_trigger_grants on auth and storage tables: membership of
--    postgres in supabase_auth_admin and supabase_storage_admin (the pre-2025 model).
ALTER ROLE supabase_admin WITH SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;

CREATE ROLE postgres WITH NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS
    PASSWORD 'postgres';
ALTER ROLE postgres SET search_path TO "$user", public, extensions;

CREATE ROLE anon NOLOGIN INHERIT;
CREATE ROLE authenticated NOLOGIN INHERIT;
CREATE ROLE service_role NOLOGIN INHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT PASSWORD 'authenticator-secret';
GRANT anon, authenticated, service_role TO authenticator;
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';
ALTER ROLE authenticator SET statement_timeout = '8s';
ALTER ROLE authenticator SET lock_timeout = '8s';

CREATE ROLE supabase_auth_admin NOINHERIT CREATEROLE LOGIN NOREPLICATION PASSWORD 'auth-secret';
ALTER ROLE supabase_auth_admin SET search_path = auth;
ALTER ROLE supabase_auth_admin SET idle_in_transaction_session_timeout = 60000;
CREATE ROLE supabase_storage_admin NOINHERIT CREATEROLE LOGIN NOREPLICATION
    PASSWORD 'storage-secret';
ALTER ROLE supabase_storage_admin SET search_path = storage;
GRANT authenticator TO supabase_storage_admin;
CREATE ROLE supabase_functions_admin NOINHERIT CREATEROLE LOGIN NOREPLICATION;
CREATE ROLE supabase_realtime_admin NOINHERIT CREATEROLE LOGIN REPLICATION;
CREATE ROLE supabase_replication_admin LOGIN REPLICATION;
CREATE ROLE supabase_read_only_user LOGIN BYPASSRLS;
GRANT pg_read_all_data TO supabase_read_only_user;
CREATE ROLE dashboard_user NOSUPERUSER CREATEDB CREATEROLE REPLICATION;
CREATE ROLE pgbouncer LOGIN PASSWORD 'pgbouncer-secret';

GRANT anon, authenticated, service_role TO postgres;
GRANT pg_monitor, pg_read_all_data, pg_signal_backend TO postgres;
GRANT supabase_functions_admin TO postgres;
GRANT supabase_auth_admin, supabase_storage_admin TO postgres;  -- supautils stand-in
GRANT SET ON PARAMETER session_replication_role TO postgres;    -- supautils stand-in

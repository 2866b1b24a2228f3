-- Database roles for Breakglass on PostgreSQL.
--
-- Two roles: breakglass_owner owns the schema and runs the migrations (its
-- password stays with the operator who deploys); breakglass_app is what the web
-- nodes and workers log in as. The app role owns nothing, so it cannot drop or
-- disable the audit trail's triggers, and it may only read and append the trail.
--
-- Run as a superuser, after `manage.py migrate` ran as breakglass_owner:
--   psql -v ON_ERROR_STOP=1 -d breakglass -f deploy/postgres-roles.sql
-- and again after every upgrade that adds tables.
--
-- Create the roles once beforehand, for example:
--   CREATE ROLE breakglass_owner LOGIN PASSWORD '...';
--   CREATE ROLE breakglass_app LOGIN PASSWORD '...' NOSUPERUSER NOCREATEDB NOCREATEROLE;
--   CREATE DATABASE breakglass OWNER breakglass_owner;

-- The app creates nothing in the schema (PostgreSQL before 15 lets everyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO breakglass_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO breakglass_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO breakglass_app;

-- The trail: read and append only. The triggers refuse the rest anyway; the
-- missing privileges make the refusal come before any trigger runs.
REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON breakglass_auditevent FROM breakglass_app;

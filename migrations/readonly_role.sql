-- A Postgres role for reporting: it reads every table and view shiftdown keeps and
-- writes nothing. Run once per database as the role that runs `shiftdown db upgrade`
-- (so that tables and views added by later revisions are granted too), e.g.
--   psql "$DATABASE" -f migrations/readonly_role.sql
-- then give it a password: ALTER ROLE shiftdown_reader PASSWORD '...';
CREATE ROLE shiftdown_reader LOGIN;
GRANT USAGE ON SCHEMA public TO shiftdown_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO shiftdown_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO shiftdown_reader;

-- What of a Supabase database is the app's: one query per rule, shared by the backup
-- (which reads them inside its snapshot) and the restore's wipe (which applies them to the
-- target), so both draw the line in the same place. Table aliases must not be names of
-- the wipe's variables (r, g, s1, ...): PL/pgSQL would read them as those. @PLATFORM@ is an oid[] of Supabase's
-- roles (and superusers), @MANAGED@ a text[] of Supabase's schemas.

-- @rule platform: Supabase's roles, and any superuser; their objects are never the app's.
SELECT coalesce(array_agg(oid ORDER BY oid), '{}') FROM pg_catalog.pg_roles
WHERE (rolname = ANY(@RESERVED@) OR rolname ~ @RESERVED_RE@ OR rolsuper) AND rolname <> 'postgres'

-- @rule managed: Supabase's schemas: listed, owned by its roles, or made by an extension.
SELECT coalesce(array_agg(n.nspname::text ORDER BY n.nspname), '{}')
FROM pg_catalog.pg_namespace n
WHERE n.nspname <> 'public' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND (n.nspname = ANY(@LISTED@) OR n.nspname ~ @LISTED_RE@ OR n.nspowner = ANY(@PLATFORM@)
       OR EXISTS (SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_namespace'::regclass
                    AND d.objid = n.oid AND d.deptype = 'e'))

-- @rule triggers: triggers on Supabase's tables that call the app's functions, or a
-- database webhook (supabase_functions.http_request); not on an extension's tables.
SELECT n.nspname::text, c.relname::text, t.tgname::text
FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND n.nspname = ANY(@MANAGED@)
  AND (NOT p.proowner = ANY(@PLATFORM@)
       OR (pn.nspname = 'supabase_functions' AND p.proname = 'http_request'))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
ORDER BY 1, 2, 3

-- @rule policies: every policy on Supabase's tables (Supabase ships none), but those of
-- an extension's tables (pg_cron makes its own).
SELECT n.nspname::text, c.relname::text, p.polname::text
FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(@MANAGED@)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')
ORDER BY 1, 2, 3

-- @rule functions: the app's functions in Supabase's schemas (say, extensions): owned by
-- its roles, not an extension's, not called by an event trigger, not Supabase's own that
-- postgres happens to own.
SELECT n.nspname::text, p.proname::text,
    format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)),
    CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(@MANAGED@) AND NOT p.proowner = ANY(@PLATFORM@)
  AND NOT (n.nspname || '.' || p.proname) = ANY(@SUPABASE_FUNCTIONS@)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                    AND d.deptype = 'e')
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_event_trigger'::regclass
                    AND d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = p.oid)
ORDER BY 1, 2, 3

-- @rule grants: what the app's own roles were granted on Supabase's tables, sequences and
-- schemas: (object kind, schema, name or NULL, grantee, privilege, with grant option).
SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, n.nspname::text,
    c.relname::text, gr.rolname::text, x.privilege_type, x.is_grantable
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
    pg_catalog.aclexplode(c.relacl) x JOIN pg_catalog.pg_roles gr ON gr.oid = x.grantee
WHERE n.nspname = ANY(@MANAGED@) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND NOT (gr.rolname = ANY(@RESERVED@) OR gr.rolname ~ @RESERVED_RE@ OR gr.rolname ~ '^pg_'
           OR gr.oid = ANY(@PLATFORM@))
UNION ALL
SELECT 'SCHEMA', n.nspname::text, NULL, gr.rolname::text, x.privilege_type, x.is_grantable
FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) x
JOIN pg_catalog.pg_roles gr ON gr.oid = x.grantee
WHERE n.nspname = ANY(@MANAGED@)
  AND NOT (gr.rolname = ANY(@RESERVED@) OR gr.rolname ~ @RESERVED_RE@ OR gr.rolname ~ '^pg_'
           OR gr.oid = ANY(@PLATFORM@))
ORDER BY 1, 2, 3, 4, 5

-- @rule platform_tables: Supabase's tables in the app's schemas (older projects have some
-- in public): neither in the schema file nor in the data, and never dropped.
SELECT n.nspname::text, c.relname::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT n.nspname = ANY(@MANAGED@) AND n.nspname <> 'information_schema'
  AND n.nspname !~ '^pg_' AND c.relkind IN ('r', 'p', 'm', 'f') AND c.relowner = ANY(@PLATFORM@)
ORDER BY 1, 2

-- The restore's wipe for a Supabase database (pgvault's Supabase profile), run as
-- postgres inside the restore's transaction: what the app owns goes, Supabase's own stays.
-- @RULE_name@ is a query of supabase_rules.sql (the backup used the same ones); @NAME@
-- placeholders are filled in by pgvault.profiles.supabase.wipe_sql.
DO $pgvault$
DECLARE
    s1 text; s2 text; s3 text; s4 text; g boolean;
    r record; obj text; who text; kind text;
    platform oid[];
    managed text[];
    app_schemas text[];
    tables text;
BEGIN
    platform := (@RULE_platform@);
    managed := (@RULE_managed@);
    SELECT coalesce(array_agg(n.nspname::text), '{}') INTO app_schemas FROM pg_catalog.pg_namespace n
        WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
          AND NOT n.nspname = ANY(managed);

    -- The app's triggers and policies on Supabase's tables, and its roles' grants there.
    FOR s1, s2, s3 IN @RULE_triggers@ LOOP
        EXECUTE format('DROP TRIGGER %I ON %I.%I', s3, s1, s2);
    END LOOP;
    FOR s1, s2, s3 IN @RULE_policies@ LOOP
        EXECUTE format('DROP POLICY %I ON %I.%I', s3, s1, s2);
    END LOOP;
    FOR s1, s2, s3, s4 IN SELECT DISTINCT gk, gs, gn, gw
        FROM (@RULE_grants@) AS app_grants (gk, gs, gn, gw, gp, go) LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM %I', s1,
            CASE WHEN s3 IS NULL THEN quote_ident(s2) ELSE format('%I.%I', s2, s3) END, s4);
    END LOOP;

    -- Large objects, event triggers, publications and foreign servers of the app's roles.
    PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata
        WHERE NOT lomowner = ANY(platform);
    FOR s1 IN SELECT evtname FROM pg_catalog.pg_event_trigger WHERE NOT evtowner = ANY(platform) LOOP
        EXECUTE format('DROP EVENT TRIGGER %I', s1);
    END LOOP;
    FOR s1 IN SELECT pubname FROM pg_catalog.pg_publication
        WHERE NOT pubowner = ANY(platform) AND pubname !~ '^supabase_realtime' LOOP
        EXECUTE format('DROP PUBLICATION %I', s1);
    END LOOP;
    FOR s1 IN SELECT srvname FROM pg_catalog.pg_foreign_server WHERE NOT srvowner = ANY(platform) LOOP
        EXECUTE format('DROP SERVER %I CASCADE', s1);
    END LOOP;

    -- The app's schemas: each one whole, but public, which Supabase set up, emptied of
    -- what the app owns (names first: a drop may cascade to what comes later).
    FOR s1 IN SELECT nspname FROM pg_catalog.pg_namespace
        WHERE nspname = ANY(app_schemas) AND nspname <> 'public' LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', s1);
    END LOOP;
    FOR obj IN SELECT unnest(array_agg(s)) FROM (
        SELECT format('DROP %s IF EXISTS %s CASCADE',
            CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
            format('public.%I(%s)', p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid))) AS s
        FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'public'::regnamespace
          AND NOT p.proowner = ANY(platform)
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass
                          AND d.objid = p.oid AND d.deptype = 'e')
        UNION ALL
        SELECT format('DROP %s IF EXISTS public.%I CASCADE',
            CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE' WHEN 'c' THEN 'TYPE'
                ELSE 'TABLE' END, c.relname)
        FROM pg_catalog.pg_class c WHERE c.relnamespace = 'public'::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c') AND NOT c.relowner = ANY(platform)
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype IN ('e', 'a', 'i'))
        UNION ALL
        SELECT format('DROP %s IF EXISTS public.%I CASCADE',
            CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.typname)
        FROM pg_catalog.pg_type t WHERE t.typnamespace = 'public'::regnamespace
          AND t.typtype IN ('d', 'e', 'r') AND NOT t.typowner = ANY(platform)
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::regclass
                          AND d.objid = t.oid AND d.deptype = 'e')
        UNION ALL
        SELECT format('DROP COLLATION IF EXISTS public.%I CASCADE', l.collname)
        FROM pg_catalog.pg_collation l WHERE l.collnamespace = 'public'::regnamespace
          AND NOT l.collowner = ANY(platform)
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_collation'::regclass
                          AND d.objid = l.oid AND d.deptype = 'e')
        UNION ALL
        SELECT format('DROP TEXT SEARCH CONFIGURATION IF EXISTS public.%I CASCADE', f.cfgname)
        FROM pg_catalog.pg_ts_config f WHERE f.cfgnamespace = 'public'::regnamespace
          AND NOT f.cfgowner = ANY(platform)
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_ts_config'::regclass
                          AND d.objid = f.oid AND d.deptype = 'e')
    ) AS drops LOOP
        EXECUTE obj;
    END LOOP;
    -- The app's functions in Supabase's schemas; no CASCADE: nothing of Supabase's may go.
    FOR s1, s2, s3, s4 IN @RULE_functions@ LOOP
        EXECUTE format('DROP %s IF EXISTS %s', s4, s3);
    END LOOP;

    -- Default privileges of the roles this session acts for: none, until the backup's.
    FOR r IN SELECT d.defaclrole::regrole::text AS role, d.defaclnamespace, d.defaclobjtype,
            d.defaclacl, n.nspname
        FROM pg_catalog.pg_default_acl d LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
        WHERE NOT d.defaclrole = ANY(platform)
          AND pg_catalog.pg_has_role(d.defaclrole, 'USAGE')
          AND (d.defaclnamespace = 0 OR n.nspname = ANY(app_schemas)) LOOP
        kind := CASE r.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
            WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END;
        FOR who IN SELECT DISTINCT
                CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) END
            FROM pg_catalog.aclexplode(r.defaclacl) x LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s %s REVOKE ALL ON %s FROM %s', r.role,
                CASE WHEN r.defaclnamespace = 0 THEN '' ELSE format('IN SCHEMA %I', r.nspname) END,
                kind, who);
        END LOOP;
        IF r.defaclnamespace = 0 THEN
            FOR who, obj IN SELECT
                    CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) END,
                    x.privilege_type
                FROM pg_catalog.aclexplode(pg_catalog.acldefault(
                    CASE r.defaclobjtype WHEN 'S' THEN 's' ELSE r.defaclobjtype END,
                    r.defaclrole)) x LOOP
                EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT %s ON %s TO %s',
                               r.role, obj, kind, who);
            END LOOP;
        END IF;
    END LOOP;

    -- public's privileges as initdb made them: the schema file grants the backup's.
    FOR who IN SELECT DISTINCT CASE WHEN x.grantee = 0 THEN 'PUBLIC'
            ELSE quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) END
        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) x
        WHERE n.nspname = 'public' AND x.grantee <> n.nspowner LOOP
        EXECUTE format('REVOKE ALL ON SCHEMA public FROM %s', who);
    END LOOP;
    FOR who, obj IN SELECT CASE WHEN x.grantee = 0 THEN 'PUBLIC'
            ELSE quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) END, x.privilege_type
        FROM pg_catalog.pg_init_privs i, pg_catalog.aclexplode(i.initprivs) x
        WHERE i.objoid = 'public'::regnamespace AND i.classoid = 'pg_catalog.pg_namespace'::regclass
          AND x.grantee <> (SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = 'public') LOOP
        EXECUTE format('GRANT %s ON SCHEMA public TO %s', obj, who);
    END LOOP;

    -- The rows the backup replaces: users, identities, buckets, objects, ...
    SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') INTO tables
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(@DATA@) AND n.nspname = ANY(managed) AND c.relkind IN ('r', 'p')
          AND NOT c.relispartition
          AND NOT (n.nspname || '.' || c.relname) = ANY(@BOOKKEEPING@);
    IF tables IS NOT NULL THEN
        EXECUTE 'TRUNCATE ' || tables;
    END IF;
END $pgvault$;

-- The SQL surface: the Azure signatures, and the attributes every function carries.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
RESET client_min_messages;

SELECT extname, extversion, extrelocatable, n.nspname AS schema
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
  WHERE extname = 'azure_local_ai';
SELECT ARRAY(SELECT r.extname FROM pg_extension r
             WHERE r.oid IN (SELECT d.refobjid FROM pg_depend d
                             WHERE d.objid = (SELECT oid FROM pg_extension WHERE extname = 'azure_local_ai')
                               AND d.classid = 'pg_extension'::regclass AND d.refclassid = 'pg_extension'::regclass)) AS requires;

-- the public functions: name, arguments, result, volatility, strict, parallel
SELECT p.proname AS name, pg_get_function_arguments(p.oid) AS arguments, pg_get_function_result(p.oid) AS result,
       p.provolatile AS volatility, p.proisstrict AS strict, p.proparallel AS parallel
  FROM pg_proc p
  WHERE p.pronamespace = 'azure_local_ai'::regnamespace AND p.proname NOT LIKE '\_%'
  ORDER BY 1, 2;

-- every function: pinned search_path, a comment, a member of the extension
SELECT count(*) AS functions,
       count(*) FILTER (WHERE p.proconfig = ARRAY['search_path=pg_catalog, pg_temp']) AS pinned_search_path,
       count(*) FILTER (WHERE obj_description(p.oid, 'pg_proc') IS NOT NULL) AS commented,
       count(*) FILTER (WHERE EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                                        AND d.objid = p.oid AND d.deptype = 'e')) AS members
  FROM pg_proc p WHERE p.pronamespace IN ('azure_local_ai'::regnamespace,
                                          'azure_local_ai_internal'::regnamespace);

-- SECURITY DEFINER: the public functions that reach the private internals, and load() (so that an
-- administrator cannot pick the package version); set_setting and get_setting(text) run as the caller
SELECT p.oid::regprocedure AS security_definer
  FROM pg_proc p
  WHERE p.pronamespace IN ('azure_local_ai'::regnamespace, 'azure_local_ai_internal'::regnamespace)
    AND p.prosecdef
  ORDER BY 1::text COLLATE "C";

-- everyone may use the schema and the functions, except set_setting
SELECT has_schema_privilege('public', 'azure_local_ai', 'USAGE') AS schema_usage;
SELECT p.oid::regprocedure AS function
  FROM pg_proc p
  WHERE p.pronamespace = 'azure_local_ai'::regnamespace
    AND NOT EXISTS (SELECT FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                    WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
  ORDER BY 1;

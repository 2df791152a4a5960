-- Internals are private; who is an administrator cannot be obtained with CREATEROLE alone.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
RESET client_min_messages;

-- \df azure_local_ai.* shows the Azure functions and the documented extras, nothing internal
SELECT p.proname, count(*) FROM pg_proc p
  WHERE p.pronamespace = 'azure_local_ai'::regnamespace GROUP BY 1 ORDER BY 1;

-- PUBLIC may not use the internals' schema, so it can call none of them by name
SELECT has_schema_privilege('public', 'azure_local_ai_internal', 'USAGE') AS internal_usage;
-- EXECUTE is kept only where PostgreSQL checks it as the querying role, never by name: the
-- row-level security policies of azure_local_ai.vectorizer (owns, can_read) and the functions
-- of the vectorizer_status and vectorizer_failures views
SELECT count(*) AS internals FROM pg_proc p
  WHERE p.pronamespace = 'azure_local_ai_internal'::regnamespace;
SELECT p.oid::regprocedure AS public_may_execute FROM pg_proc p
  WHERE p.pronamespace = 'azure_local_ai_internal'::regnamespace
    AND has_function_privilege('public', p.oid, 'EXECUTE')
  ORDER BY 1::text COLLATE "C";

-- a plain role cannot load a package of its choosing, by any name
CREATE ROLE regress_azure_local_ai_someone;
SET ROLE regress_azure_local_ai_someone;
SELECT azure_local_ai_internal.py_load('/usr/local/lib/pglocalai', '0.9.0');
SELECT azure_local_ai_internal.load();
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello'), 1) AS dims;
RESET ROLE;

-- a CREATEROLE role that grants itself azure_local_ai_admin is not an administrator: PostgreSQL 15
-- lets it grant the role (the grant names it as the grantor, which does not count); 16 and later
-- refuse the grant (it holds no ADMIN OPTION on a role it did not create)
CREATE ROLE regress_azure_local_ai_rolemaker CREATEROLE;
SET ROLE regress_azure_local_ai_rolemaker;
DO $$
BEGIN
  BEGIN
    GRANT azure_local_ai_admin TO regress_azure_local_ai_rolemaker;
  EXCEPTION WHEN insufficient_privilege THEN
    NULL;
  END;
  BEGIN
    PERFORM azure_local_ai.set_setting('spin_control', 'true');
    RAISE NOTICE 'set_setting: allowed';
  EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'set_setting: %', SQLERRM;
  END;
END $$;
RESET ROLE;
REVOKE azure_local_ai_admin FROM regress_azure_local_ai_rolemaker CASCADE;

-- nor can it take the role's name before the extension exists: a role it created is refused
DROP EXTENSION azure_local_ai;
SELECT pg_catalog.to_regrole('azure_local_ai_admin') IS NOT NULL AS admin_role_kept;

DROP ROLE regress_azure_local_ai_someone;
DROP ROLE regress_azure_local_ai_rolemaker;

-- get_setting and set_setting: the runtime's ONNX Runtime thread-pool settings.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
RESET client_min_messages;

-- all settings, by default and with an empty key list
SELECT jsonb_object_keys(azure_local_ai.get_setting()) AS key ORDER BY 1;
SELECT azure_local_ai.get_setting() = azure_local_ai.get_setting(ARRAY[]::text[]) AS same;
SELECT jsonb_typeof(s -> 'intra_op_parallelism') AS intra, jsonb_typeof(s -> 'inter_op_parallelism') AS inter,
       jsonb_typeof(s -> 'spin_control') AS spin
  FROM azure_local_ai.get_setting() AS s;
SELECT (azure_local_ai.get_setting() ->> 'intra_op_parallelism')::int >= 1 AS intra_at_least_1;
-- some keys, and one key as text
SELECT jsonb_object_keys(azure_local_ai.get_setting(ARRAY['spin_control', 'inter_op_parallelism'])) AS key ORDER BY 1;
SELECT pg_typeof(azure_local_ai.get_setting('spin_control'));
SELECT azure_local_ai.get_setting('spin_control') IN ('true', 'false') AS boolean_text;
SELECT azure_local_ai.get_setting('intra_op_parallelism') = azure_local_ai.get_setting() ->> 'intra_op_parallelism' AS agree;
SELECT azure_local_ai.get_setting(NULL::text) IS NULL AS null_key;
-- an unknown key
SELECT azure_local_ai.get_setting('no_such_setting');

-- set_setting: a superuser may; setting the current value changes nothing
SELECT azure_local_ai.get_setting('spin_control') AS before \gset
SELECT azure_local_ai.set_setting('spin_control', :'before') ->> 'spin_control' = :'before' AS unchanged;
SELECT azure_local_ai.set_setting('intra_op_parallelism', 'lots');
SELECT azure_local_ai.set_setting('no_such_setting', '1');
SELECT azure_local_ai.set_setting('spin_control', NULL);

-- set_setting is for administrators only
CREATE ROLE regress_azure_local_ai_plain;
SET ROLE regress_azure_local_ai_plain;
-- a plain role can embed and read settings
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello'), 1) AS dims;
SELECT azure_local_ai.get_setting('spin_control') = :'before' AS reads;
-- but not change them: no EXECUTE privilege
SELECT azure_local_ai.set_setting('spin_control', :'before');
RESET ROLE;
-- a grant that is too wide still does not let it through
GRANT EXECUTE ON FUNCTION azure_local_ai.set_setting(text, text) TO regress_azure_local_ai_plain;
SET ROLE regress_azure_local_ai_plain;
SELECT azure_local_ai.set_setting('spin_control', :'before');
-- nor can it reach the internals
SELECT azure_local_ai_internal.set_setting('spin_control', :'before');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION azure_local_ai.set_setting(text, text) FROM regress_azure_local_ai_plain;
-- roles that a superuser granted azure_local_ai_admin (created with the extension) are administrators
GRANT azure_local_ai_admin TO regress_azure_local_ai_plain;
SET ROLE regress_azure_local_ai_plain;
SELECT azure_local_ai.set_setting('spin_control', :'before') ->> 'spin_control' = :'before' AS admin_may;
SELECT azure_local_ai.set_setting('spin_control', NULL);
RESET ROLE;
REVOKE azure_local_ai_admin FROM regress_azure_local_ai_plain;
DROP ROLE regress_azure_local_ai_plain;

-- Beyond Azure: list_models, model_metadata, token_count, runtime_stats, version.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
RESET client_min_messages;

-- the default model is installed (others may be)
SELECT model_uri, dimensions, max_tokens, variant = ANY (variants) AS variant_listed, loaded IS NOT NULL AS has_loaded
  FROM azure_local_ai.list_models() WHERE model_uri = 'multilingual-e5-small:v1';
SELECT count(*) >= 1 AS some_models, count(DISTINCT model_uri) = count(*) AS unique_uris
  FROM azure_local_ai.list_models();

-- model_metadata
SELECT m ->> 'uri' AS uri, (m ->> 'dimensions')::int AS dimensions, (m ->> 'max_tokens')::int AS max_tokens,
       m ->> 'pooling' AS pooling, m ->> 'normalize' AS normalize, m ->> 'license' AS license
  FROM azure_local_ai.model_metadata('multilingual-e5-small:v1') AS m;
SELECT azure_local_ai.model_metadata(NULL) IS NULL AS null_in;
\set VERBOSITY terse
SELECT azure_local_ai.model_metadata('no-such-model:v1');
\set VERBOSITY default

-- token_count: what the model sees, <s> and </s> included, before truncation to 512
SELECT azure_local_ai.token_count('multilingual-e5-small:v1', 'Hello world') AS hello_world,
       azure_local_ai.token_count('multilingual-e5-small:v1', '') AS empty,
       azure_local_ai.token_count('multilingual-e5-small:v1', repeat('word ', 1000)) > 512 AS long_counts_all,
       azure_local_ai.token_count('multilingual-e5-small:v1', NULL) IS NULL AS null_in;
\set VERBOSITY terse
SELECT azure_local_ai.token_count('no-such-model:v1', 'x');
\set VERBOSITY default

-- runtime_stats: a JSON object with totals and one entry per model that served requests
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'count me'), 1) AS dims;
SELECT jsonb_typeof(s) AS stats, jsonb_typeof(s -> 'totals') AS totals,
       (s -> 'totals' ->> 'requests')::bigint > 0 AS served,
       s -> 'models' ? 'multilingual-e5-small:v1' AS per_model
  FROM azure_local_ai.runtime_stats() AS s;

-- version: the extension's and the runtime's
SELECT azure_local_ai.version() LIKE 'azure_local_ai 1.2.0, runtime 1.2.0 at /%' AS version;
SET azure_local_ai.runtime_socket = '/nonexistent/pglocalai.sock';
SELECT azure_local_ai.version() LIKE 'azure_local_ai 1.2.0, runtime not reachable at /nonexistent/pglocalai.sock%' AS version_without_runtime;
RESET azure_local_ai.runtime_socket;

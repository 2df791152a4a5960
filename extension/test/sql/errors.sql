-- Every error: SQLSTATE, message, detail and hint in the PostgreSQL style.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
CREATE EXTENSION IF NOT EXISTS vector;
RESET client_min_messages;

-- the SQLSTATE and the message of the error a statement raises (OTHERS does not cover 57014)
CREATE FUNCTION pg_temp.sqlstate_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE statement;
  RETURN 'no error';
EXCEPTION WHEN OTHERS OR query_canceled THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- an unknown model: the message names it, the hint lists the installed models
\set VERBOSITY terse
SELECT azure_local_ai.create_embeddings('no-such-model:v1', 'hello');
SELECT * FROM azure_local_ai.create_embeddings('no-such-model:v1', ARRAY['hello']);
\set VERBOSITY default
DO $$
DECLARE
  state text;
  hint text;
BEGIN
  PERFORM azure_local_ai.create_embeddings('no-such-model:v1', 'hello');
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, hint = PG_EXCEPTION_HINT;
  RAISE NOTICE 'sqlstate %, hint lists the default model: %', state, hint LIKE '%multilingual-e5-small:v1%';
END $$;

-- bad arguments (22023)
SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a', 'b'], batch_size => 0);
SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a', 'b'], batch_size => -5);
SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a', 'b'], ARRAY[1, 2, 3]);
SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a'], ARRAY[]::int[]);
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'a', timeout_ms => -1);
SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a'], timeout_ms => -1);
SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY[['a', 'b'], ['c', 'd']]);
SELECT pg_temp.sqlstate_of($$SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'a', timeout_ms => -1)$$);

-- the runtime does not answer in time (57014); 0 means no runtime-side limit
\set VERBOSITY terse
SELECT count(*) FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1',
  ARRAY(SELECT repeat('a long passage of many words ', 100) || g FROM generate_series(1, 200) g),
  batch_size => 200, timeout_ms => 1);
\set VERBOSITY default
SELECT pg_temp.sqlstate_of($$SELECT count(*) FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1',
  ARRAY(SELECT repeat('a long passage of many words ', 100) || g FROM generate_series(1, 200) g),
  batch_size => 200, timeout_ms => 1)$$) LIKE '57014: %' AS timed_out;
SELECT count(*) FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a', 'b'], timeout_ms => 0);

-- the runtime cannot be reached (08001): the hint says how to start it
SET azure_local_ai.runtime_socket = '/nonexistent/pglocalai.sock';
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello');
SELECT * FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['hello'], ARRAY[1]);
SELECT azure_local_ai.get_setting();
-- a NULL input needs no runtime
SELECT count(*) AS rows, count(embedding) AS vectors
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY[NULL]::text[]);
SET azure_local_ai.runtime_socket = 'relative/pglocalai.sock';
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello');
RESET azure_local_ai.runtime_socket;
-- and the session recovers at once
SELECT vector_dims(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello')::vector);

-- create_embeddings: the three overloads, NULL handling, order, batching, and agreement.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
CREATE EXTENSION IF NOT EXISTS vector;
RESET client_min_messages;

-- text overload: a real[] of 384 dimensions, L2-normalised
SELECT pg_typeof(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello world'));
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello world'), 1) AS dims;
SELECT round(vector_norm(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello world')::vector)::numeric, 4) AS norm;
-- the same text gives the same vector, every time
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello world')
     = azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello world', timeout_ms => 0) AS same;
-- no prefix is added: 'query: ' changes the vector
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'query: hello world')
     = azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello world') AS same_with_prefix;
-- empty text, emoji, many scripts and very long text all give a vector
SELECT t.label, vector_dims(azure_local_ai.create_embeddings('multilingual-e5-small:v1', t.body)::vector) AS dims
  FROM (VALUES ('empty', ''), ('emoji', '🙂🚀'), ('mixed', 'Grüße, 你好, こんにちは, مرحبا, привет'),
               ('long', repeat('a long text far beyond 512 tokens ', 400))) AS t(label, body);

-- NULL in, NULL out (the functions are STRICT)
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', NULL::text) IS NULL AS null_input;
SELECT azure_local_ai.create_embeddings(NULL, 'hello') IS NULL AS null_model;
SELECT count(*) AS rows FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', NULL::text[]);
SELECT count(*) AS rows FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a'], NULL::int[]);

-- array overload: one row per input, in input order, NULL for NULL elements
SELECT t.ord, t.embedding IS NULL AS is_null, vector_dims(t.embedding::vector) AS dims
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1',
         ARRAY['one', NULL, 'three', '', NULL, 'six', 'seven'], batch_size => 2)
       WITH ORDINALITY AS t(embedding, ord);
SELECT count(*) AS rows FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY[]::text[]);
SELECT count(*) AS rows, count(embedding) AS vectors
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY[NULL, NULL]::text[]);

-- each row is the embedding of its own input (text vs array overload, cosine >= 0.99999),
-- whatever the batch size
CREATE TEMP TABLE texts AS
  SELECT g AS n, 'sentence number ' || g || ' about ' || (ARRAY['cats', 'rain', 'SQL', 'music'])[g % 4 + 1] AS body
  FROM generate_series(1, 23) g;
SELECT b.batch_size, count(*) AS rows,
       bool_and(1 - (a.embedding::vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', t.body)::vector) >= 0.99999) AS agree
  FROM (VALUES (1), (5), (23), (128)) AS b(batch_size)
  CROSS JOIN LATERAL azure_local_ai.create_embeddings('multilingual-e5-small:v1',
         ARRAY(SELECT body FROM texts ORDER BY n), batch_size => b.batch_size) WITH ORDINALITY AS a(embedding, ord)
  JOIN texts t ON t.n = a.ord
  GROUP BY b.batch_size ORDER BY b.batch_size;

-- ids overload: ids of any type, paired by position, NULL embedding for NULL input
SELECT e.id, e.embedding IS NULL AS is_null
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['a', NULL, 'c'], ARRAY[10, 20, 30]) AS e;
SELECT e.id, pg_typeof(e.id) AS id_type, vector_dims(e.embedding::vector) AS dims
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['x', 'y'], ARRAY['doc-x', 'doc-y']) AS e;
SELECT e.id, pg_typeof(e.id) AS id_type
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['x', 'y'],
         ARRAY['00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002']::uuid[], 1) AS e;
SELECT bool_and(1 - (e.embedding::vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', t.body)::vector) >= 0.99999) AS agree,
       count(*) AS rows
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1',
         ARRAY(SELECT body FROM texts ORDER BY n), ARRAY(SELECT n FROM texts ORDER BY n), batch_size => 4) AS e
  JOIN texts t ON t.n = e.id;
-- in the select list, expanded with .*, as the Azure documentation does
SELECT s.id, vector_dims(s.embedding::vector) AS dims
  FROM (SELECT (azure_local_ai.create_embeddings('multilingual-e5-small:v1', ARRAY['p', 'q'], ARRAY[1, 2])).*) AS s;

DROP TABLE texts;

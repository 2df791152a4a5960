-- Embeddings in an HNSW index (pgvector, cosine distance), searched with a query-time embedding.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
CREATE EXTENSION IF NOT EXISTS vector;
RESET client_min_messages;

CREATE TABLE passages (id integer PRIMARY KEY, body text NOT NULL, embedding vector(384));
INSERT INTO passages (id, body) VALUES
  (1, 'PostgreSQL stores rows in tables and answers SQL queries.'),
  (2, 'The cat slept on the warm windowsill all afternoon.'),
  (3, 'Photosynthesis turns sunlight, water and carbon dioxide into sugar.'),
  (4, 'Il pleut beaucoup en Bretagne au mois de novembre.'),
  (5, '東京は日本の首都です。'),
  (6, 'A vector index finds the nearest neighbours of an embedding quickly.');
UPDATE passages SET embedding = e.embedding::vector
  FROM azure_local_ai.create_embeddings('multilingual-e5-small:v1',
         ARRAY(SELECT body FROM passages ORDER BY id), ARRAY(SELECT id FROM passages ORDER BY id)) AS e
  WHERE passages.id = e.id;
CREATE INDEX passages_embedding_idx ON passages USING hnsw (embedding vector_cosine_ops);

-- the planner uses the index: the query embedding is IMMUTABLE, so it is computed once, at plan time
CREATE FUNCTION pg_temp.uses_index(query text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  line text;
BEGIN
  FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
    IF line LIKE '%Index Scan using passages_embedding_idx%' THEN
      RETURN true;
    END IF;
  END LOOP;
  RETURN false;
END $$;
SET enable_seqscan = off;
SELECT pg_temp.uses_index($$SELECT id FROM passages ORDER BY embedding <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'which city is the capital of Japan?')::vector LIMIT 3$$) AS index_scan;
SELECT id FROM passages
  ORDER BY embedding <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'which city is the capital of Japan?')::vector
  LIMIT 1;
SELECT id FROM passages
  ORDER BY embedding <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'how do plants make their food?')::vector
  LIMIT 1;
SELECT id FROM passages
  ORDER BY embedding <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'approximate nearest neighbour search for vectors')::vector
  LIMIT 1;
-- a new row is searchable at once
INSERT INTO passages (id, body, embedding) VALUES
  (7, 'Mount Everest is the highest mountain on Earth.',
   azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'Mount Everest is the highest mountain on Earth.')::vector);
SELECT id FROM passages
  ORDER BY embedding <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'what is the tallest mountain in the world?')::vector
  LIMIT 1;
RESET enable_seqscan;

DROP TABLE passages;

-- The three examples of Azure's azure_local_ai documentation, run verbatim: a generated column,
-- a batch UPDATE through the ids overload, and a similarity query with ::vector and <=>.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
CREATE EXTENSION IF NOT EXISTS vector;
RESET client_min_messages;

CREATE TABLE docs (doc_id integer PRIMARY KEY, doc text NOT NULL, embedding real[]);
INSERT INTO docs (doc_id, doc) VALUES
  (1, 'The azure_local_ai extension creates text embeddings inside PostgreSQL with a local model.'),
  (2, 'Bake the bread for forty minutes until the crust is golden brown.'),
  (3, 'The football match ended in a draw after extra time.'),
  (4, 'Heavy rain and strong winds are expected along the coast tomorrow.'),
  (5, 'Der Zug nach Berlin fährt um acht Uhr vom Hauptbahnhof ab.'),
  (6, 'La tour Eiffel est le monument le plus visité de Paris.'),
  (7, 'Regular exercise and a balanced diet keep the heart healthy.'),
  (8, 'Stock markets fell sharply after the central bank raised interest rates.');

-- 1. a generated column: needs the text overload to be IMMUTABLE
ALTER TABLE docs ADD COLUMN doc_vector vector(384)
  GENERATED ALWAYS AS (azure_local_ai.create_embeddings('multilingual-e5-small:v1', doc)::vector) STORED;
SELECT count(*) AS rows, bool_and(vector_dims(doc_vector) = 384) AS all_384 FROM docs;

-- 2. a batch update through the array overload with ids
WITH docs_with_ids AS (
  SELECT (azure_local_ai.create_embeddings('multilingual-e5-small:v1', array_agg(doc), array_agg(doc_id))).* FROM docs)
UPDATE docs SET embedding = docs_with_ids.embedding FROM docs_with_ids WHERE docs.doc_id = docs_with_ids.id;
SELECT count(*) FILTER (WHERE embedding IS NOT NULL) AS embedded FROM docs;
-- each id got its own text's vector: the text and array overloads agree
SELECT bool_and(1 - (embedding::vector <=> doc_vector) >= 0.99999) AS overloads_agree FROM docs;
-- rows inserted later get their generated vector too
INSERT INTO docs (doc_id, doc) VALUES (9, 'A quiet lake in the mountains at sunrise.');
SELECT vector_dims(doc_vector) FROM docs WHERE doc_id = 9;
DELETE FROM docs WHERE doc_id = 9;

-- 3. a similarity query (the question of the Azure example replaced by a real one)
CREATE TEMP TABLE answer AS
SELECT doc, 1 - (embedding::vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'How do I create embeddings in PostgreSQL?')::vector) AS similarity
  FROM docs ORDER BY similarity DESC LIMIT 2;
SELECT count(*) AS rows FROM answer;
SELECT doc AS best FROM answer ORDER BY similarity DESC LIMIT 1;
-- a clear winner, not a coin toss (the runner-up is printed by no test: it may change with the variant)
SELECT max(similarity) - min(similarity) > 0.05 AS clear_margin FROM answer;

-- the same question in Spanish, and a German document found from English
SELECT doc_id FROM docs
  ORDER BY embedding::vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', '¿Cómo creo embeddings de texto en PostgreSQL?')::vector
  LIMIT 1;
SELECT doc_id FROM docs
  ORDER BY embedding::vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'When does the train to Berlin leave?')::vector
  LIMIT 1;
SELECT doc_id FROM docs
  ORDER BY doc_vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'Will it rain tomorrow?')::vector
  LIMIT 1;

DROP TABLE answer;
DROP TABLE docs;

-- Loading the Python package: azure_local_ai.python_lib_dir/<extension version>/pglocalai.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE;
RESET client_min_messages;

-- a folder without the package: a clear error, and nothing is cached
SET azure_local_ai.python_lib_dir = '/nonexistent/pglocalai';
SELECT azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello');
SELECT count(*) FROM azure_local_ai.list_models();
-- back to the configured folder: the next call loads it
RESET azure_local_ai.python_lib_dir;
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello'), 1) AS dims;
-- once loaded, the package stays for the session
SET azure_local_ai.python_lib_dir = '/nonexistent/pglocalai';
SELECT array_length(azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'hello'), 1) AS dims;
RESET azure_local_ai.python_lib_dir;

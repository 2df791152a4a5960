-- azure_local_ai 1.0.0: text embeddings created inside SQL by the pglocalai runtime.
--
-- Frozen once released: later versions add azure_local_ai--1.0.0--<next>.sql and a full
-- azure_local_ai--<next>.sql; this file is never edited again.
--
-- Layout (see pglocalai.pg.functions for the reasons):
--   * public functions: PL/pgSQL wrappers with the Azure signatures; they read the settings,
--     call one internal PL/Python function and cast its result;
--   * internal functions (names starting with "_"): thin PL/Python bodies that hand their
--     arguments to the pglocalai.pg.functions module, which the session loads once
--     (azure_local_ai._bootstrap) from azure_local_ai.python_lib_dir/<extension version>;
--   * errors travel back as "NULL + pending error" and are raised by azure_local_ai._raise_pending,
--     so that they keep their SQLSTATE, message, detail and hint.
--
-- Settings (GUCs, in postgresql.conf or per session):
--   azure_local_ai.runtime_socket   the runtime's Unix socket  (default /run/pglocalai/pglocalai.sock)
--   azure_local_ai.python_lib_dir   where the Python package lives (default /usr/local/lib/pglocalai)

\echo Use "CREATE EXTENSION azure_local_ai CASCADE" to load this file. \quit

-- The schema is created by CREATE EXTENSION (schema = azure_local_ai in the control file).
grant usage on schema azure_local_ai to public;

-------------------------------------------------------------------------------------------------
-- internal: loading the Python package, reporting errors

create or replace function azure_local_ai._loaded() returns boolean
as $python$
return "azure_local_ai" in GD
$python$
language plpython3u volatile strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._loaded() is
'internal: whether this session has loaded the pglocalai Python package';

create or replace function azure_local_ai._load(lib_dir text, version text) returns boolean
as $python$
import os, stat, sys

def refuse(sqlstate, message, detail=None, hint=None):
    GD["azure_local_ai.error"] = (sqlstate, message, detail, hint)
    return False

base = os.path.realpath(os.path.join(lib_dir, version))
package = os.path.join(base, "pglocalai")
if not os.path.isfile(os.path.join(package, "pg", "functions.py")):
    return refuse("58P01", f'the pglocalai {version} Python package is not installed in "{base}"',
                  f'"{package}/pg/functions.py" does not exist',
                  'install it with "make install-ext", or set azure_local_ai.python_lib_dir '
                  f'to the folder that holds {version}/pglocalai')

# Any role may SET azure_local_ai.python_lib_dir, and this code runs as the server's user: import
# only files that nobody but root and the server's user can change (keep in step with
# pglocalai.pg.functions.untrusted_reason).
def untrusted(path, sticky_ok):
    info = os.stat(path)
    if info.st_uid not in (0, os.geteuid()):
        return f'"{path}" belongs to uid {info.st_uid}'
    if info.st_mode & stat.S_IWOTH and not (sticky_ok and info.st_mode & stat.S_ISVTX):
        return f'"{path}" is writable by every user'
    return None

checks = []
folder = base
while folder != "/":
    folder = os.path.dirname(folder)
    checks.append((folder, True))
checks.append((base, False))
for root, dirs, files in os.walk(package):
    checks += [(os.path.join(root, name), False) for name in [""] + dirs + files]
for path, sticky_ok in checks:
    reason = untrusted(path, sticky_ok)
    if reason:
        return refuse("42501", f'refusing to import Python code from "{base}"', reason,
                      "the folder, the folders above it and its files must belong to root or to "
                      "the server's user, and other users must not be able to write to them")

for name in [m for m in sys.modules if m == "pglocalai" or m.startswith("pglocalai.")]:
    del sys.modules[name]
if base in sys.path:
    sys.path.remove(base)
sys.path.insert(0, base)
try:
    import pglocalai
    import pglocalai.pg.functions as functions
except Exception as exc:
    return refuse("58000", f'could not import the pglocalai package from "{base}"',
                  f"{type(exc).__name__}: {exc}", 'reinstall it with "make install-ext"')
if pglocalai.__version__ != version:
    return refuse("58000",
                  f"the pglocalai package is version {pglocalai.__version__}, "
                  f"the extension is version {version}",
                  f'the package was loaded from "{base}"',
                  "install the package of the same version, or update the extension with "
                  "ALTER EXTENSION azure_local_ai UPDATE")
GD["azure_local_ai"] = functions
return True
$python$
language plpython3u volatile strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._load(text, text) is
'internal: loads the pglocalai Python package of the given version from lib_dir/version';

create or replace function azure_local_ai._take_error
( out sqlstate text
, out message text
, out detail text
, out hint text
)
as $python$
return GD.pop("azure_local_ai.error", None) or (None, None, None, None)
$python$
language plpython3u volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._take_error() is
'internal: takes the error that the last failed internal call stored for this session';

create or replace function azure_local_ai._raise_pending() returns void
as $func$
declare
    e record;
begin
    select * into e from azure_local_ai._take_error();
    if e.sqlstate is null then
        raise exception 'the pglocalai call failed without reporting why'
            using errcode = 'internal_error';
    elsif e.detail is null and e.hint is null then
        raise exception using errcode = e.sqlstate, message = e.message;
    elsif e.hint is null then
        raise exception using errcode = e.sqlstate, message = e.message, detail = e.detail;
    elsif e.detail is null then
        raise exception using errcode = e.sqlstate, message = e.message, hint = e.hint;
    else
        raise exception using errcode = e.sqlstate, message = e.message, detail = e.detail,
            hint = e.hint;
    end if;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._raise_pending() is
'internal: raises the error that the last failed internal call stored for this session';

create or replace function azure_local_ai._raise_pending_array() returns real[]
as $func$
begin
    perform azure_local_ai._raise_pending();
    return null;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._raise_pending_array() is
'internal: _raise_pending() usable inside a query that returns real[]';

create or replace function azure_local_ai._bootstrap() returns void
as $func$
declare
    lib_dir text := coalesce(
        nullif(pg_catalog.current_setting('azure_local_ai.python_lib_dir', true), ''),
        '/usr/local/lib/pglocalai');
    version text;
begin
    select e.extversion into version
    from pg_catalog.pg_extension e
    where e.extname operator(pg_catalog.=) 'azure_local_ai';
    if not azure_local_ai._load(lib_dir, version) then
        perform azure_local_ai._raise_pending();
    end if;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._bootstrap() is
'internal: loads the pglocalai Python package matching the extension version, once per session';

-------------------------------------------------------------------------------------------------
-- internal: the calls into Python

create or replace function azure_local_ai._embed
( model_uri text
, input text
, timeout_ms integer
, socket text
) returns text
as $python$
return GD["azure_local_ai"].embed_text(GD, model_uri, input, timeout_ms, socket)
$python$
language plpython3u volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._embed(text, text, integer, text) is
'internal: one embedding as real[] text, or NULL with a pending error';

create or replace function azure_local_ai._embed_many
( model_uri text
, inputs text[]
, ids_count bigint
, batch_size bigint
, timeout_ms integer
, socket text
) returns table (ord bigint, embedding text)
as $python$
return GD["azure_local_ai"].embed_many(GD, model_uri, inputs, ids_count, batch_size, timeout_ms,
                                       socket)
$python$
language plpython3u volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._embed_many(text, text[], bigint, bigint, integer, text) is
'internal: embeddings as real[] text in input order; a row with a NULL ord means a pending error';

create or replace function azure_local_ai._request
( operation text
, arguments jsonb
, timeout_ms integer
, socket text
) returns jsonb
as $python$
return GD["azure_local_ai"].request(GD, operation, arguments, timeout_ms, socket)
$python$
language plpython3u volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._request(text, jsonb, integer, text) is
'internal: a read-only call to the runtime, or NULL with a pending error';

create or replace function azure_local_ai._is_admin() returns boolean
as $func$
    select coalesce((select r.rolsuper from pg_catalog.pg_roles r
                     where r.rolname operator(pg_catalog.=) current_user), false)
        or (pg_catalog.to_regrole('azure_local_ai_admin') is not null
            and pg_catalog.pg_has_role(current_user, 'azure_local_ai_admin', 'member'))
$func$
language sql stable parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._is_admin() is
'internal: whether the current user is a superuser or a member of role azure_local_ai_admin';

create or replace function azure_local_ai._set_setting(key text, value text, socket text)
returns jsonb
as $python$
# the privilege check runs here, not in the caller, so that calling this directly does not skip it
is_admin = plpy.execute("select azure_local_ai._is_admin() as ok")[0]["ok"]
return GD["azure_local_ai"].set_setting(GD, key, value, socket, is_admin)
$python$
language plpython3u volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai._set_setting(text, text, text) is
'internal: changes a runtime setting (administrators only), or NULL with a pending error';

-------------------------------------------------------------------------------------------------
-- create_embeddings: the Azure signatures

create or replace function azure_local_ai.create_embeddings
( model_uri text
, input text
, timeout_ms integer default 3600000
) returns real[]
as $func$
declare
    vector_text text;
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    vector_text := azure_local_ai._embed(model_uri, input, timeout_ms,
        pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if vector_text is null then
        perform azure_local_ai._raise_pending();
    end if;
    return vector_text::real[];
end
$func$
language plpgsql immutable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.create_embeddings(text, text, integer) is
'the embedding of input by model model_uri; immutable, so usable in generated columns and indexes';

create or replace function azure_local_ai.create_embeddings
( model_uri text
, inputs text[]
, batch_size bigint default 128
, timeout_ms integer default 3600000
) returns table (embedding real[])
as $func$
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    return query
        select case when e.ord is null then azure_local_ai._raise_pending_array()
                    else e.embedding::real[] end
        from azure_local_ai._embed_many(model_uri, inputs, null, batch_size, timeout_ms,
            pg_catalog.current_setting('azure_local_ai.runtime_socket', true)) as e;
end
$func$
language plpgsql immutable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.create_embeddings(text, text[], bigint, integer) is
'one embedding per element of inputs, in order (NULL for NULL), sent batch_size at a time';

create or replace function azure_local_ai.create_embeddings
( model_uri text
, inputs text[]
, ids anyarray
, batch_size bigint default 128
, timeout_ms integer default 3600000
) returns table (id anyelement, embedding real[])
as $func$
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    -- ROWS FROM zips the ids with the embeddings by position, without indexing into ids
    return query
        select z.id,
               case when z.ord is null then azure_local_ai._raise_pending_array()
                    else z.embedding::real[] end
        from rows from (
            pg_catalog.unnest(ids),
            azure_local_ai._embed_many(model_uri, inputs, pg_catalog.cardinality(ids), batch_size,
                timeout_ms, pg_catalog.current_setting('azure_local_ai.runtime_socket', true))
        ) as z(id, ord, embedding);
end
$func$
language plpgsql immutable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.create_embeddings(text, text[], anyarray, bigint, integer) is
'one (id, embedding) row per element of inputs, paired by position with ids';

-------------------------------------------------------------------------------------------------
-- settings of the runtime

create or replace function azure_local_ai.get_setting
( keys text[] default array[]::text[]
, timeout_ms integer default 3600000
) returns jsonb
as $func$
declare
    result jsonb;
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    result := azure_local_ai._request('get_settings', pg_catalog.jsonb_build_object('keys', keys),
        timeout_ms, pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if result is null then
        perform azure_local_ai._raise_pending();
    end if;
    return result;
end
$func$
language plpgsql volatile strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.get_setting(text[], integer) is
'runtime settings as a JSON object: those named in keys, all of them when keys is empty';

create or replace function azure_local_ai.get_setting
( key text
, timeout_ms integer default 3600000
) returns text
as $func$
begin
    return azure_local_ai.get_setting(array[key], timeout_ms) operator(pg_catalog.->>) key;
end
$func$
language plpgsql volatile strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.get_setting(text, integer) is
'the value of one runtime setting as text';

create or replace function azure_local_ai.set_setting(key text, value text) returns jsonb
as $func$
declare
    result jsonb;
begin
    if key is null or value is null then
        raise exception 'key and value must not be null' using errcode = 'null_value_not_allowed';
    end if;
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    result := azure_local_ai._set_setting(key, value,
        pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if result is null then
        perform azure_local_ai._raise_pending();
    end if;
    return result;
end
$func$
language plpgsql volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.set_setting(text, text) is
'changes a runtime setting for every database it serves (administrators only); returns all settings';

-- Administrators: superusers, and members of a role azure_local_ai_admin that a superuser creates
-- and grants EXECUTE on this function to. _set_setting checks this itself (and so stays callable),
-- so that a wide grant such as GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA does not open it up.
revoke execute on function azure_local_ai.set_setting(text, text) from public;

-------------------------------------------------------------------------------------------------
-- models, tokens, statistics, version

create or replace function azure_local_ai.model_metadata(model_uri text) returns jsonb
as $func$
declare
    result jsonb;
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    result := azure_local_ai._request('model_metadata',
        pg_catalog.jsonb_build_object('model', model_uri), 30000,
        pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if result is null then
        perform azure_local_ai._raise_pending();
    end if;
    return result;
end
$func$
language plpgsql stable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.model_metadata(text) is
'the metadata of an installed model (dimensions, max tokens, pooling, variants, licence, ...)';

create or replace function azure_local_ai.list_models()
returns table
( model_uri text
, dimensions integer
, max_tokens integer
, variant text
, variants text[]
, loaded boolean
)
as $func$
declare
    result jsonb;
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    result := azure_local_ai._request('list_models', '{}', 30000,
        pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if result is null then
        perform azure_local_ai._raise_pending();
    end if;
    return query
        select m.model_uri, m.dimensions, m.max_tokens, m.variant, m.variants, m.loaded
        from pg_catalog.jsonb_to_recordset(result) as m(model_uri text, dimensions integer,
            max_tokens integer, variant text, variants text[], loaded boolean)
        order by m.model_uri;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.list_models() is
'the models installed in the runtime: URI, dimensions, max tokens, default variant, variants, loaded';

create or replace function azure_local_ai.token_count(model_uri text, input text)
returns integer
as $func$
declare
    result jsonb;
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    result := azure_local_ai._request('token_count',
        pg_catalog.jsonb_build_object('model', model_uri, 'input', input), 30000,
        pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if result is null then
        perform azure_local_ai._raise_pending();
    end if;
    return result::integer;
end
$func$
language plpgsql immutable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.token_count(text, text) is
'the number of tokens the model sees for input, <s> and </s> included, before truncation';

create or replace function azure_local_ai.runtime_stats() returns jsonb
as $func$
declare
    result jsonb;
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    result := azure_local_ai._request('runtime_stats', '{}', 30000,
        pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if result is null then
        perform azure_local_ai._raise_pending();
    end if;
    return result;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.runtime_stats() is
'the runtime''s statistics: requests, texts, tokens, batches, queue, latency, per model';

create or replace function azure_local_ai.version() returns text
as $func$
declare
    result jsonb;
begin
    if not azure_local_ai._loaded() then
        perform azure_local_ai._bootstrap();
    end if;
    result := azure_local_ai._request('version', '{}', 5000,
        pg_catalog.current_setting('azure_local_ai.runtime_socket', true));
    if result is null then
        perform azure_local_ai._raise_pending();
    end if;
    return result operator(pg_catalog.#>>) '{}';
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.version() is
'the versions of the extension and of the runtime it reaches (and where it reaches it)';

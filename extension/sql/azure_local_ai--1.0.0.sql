-- azure_local_ai 1.0.0: text embeddings created inside SQL by the pglocalai runtime.
--
-- Released and frozen: never edit this file (tests/compat pins its sha256 in
-- extension/sql/FROZEN.sha256). Later versions ship an azure_local_ai--1.0.0--<next>.sql upgrade
-- script; CREATE EXTENSION runs this file and then the upgrades.
--
-- Layout (see pglocalai.pg.functions for the reasons):
--   * schema azure_local_ai: the Azure functions and our documented extras, each a one-statement
--     SQL function over the internals. They are SECURITY DEFINER (owned by the superuser who
--     created the extension) because the internals are private; set_setting is the exception.
--   * schema azure_local_ai_internal: not usable by PUBLIC. Thin PL/Python bodies (py_*) hand
--     their arguments to the pglocalai.pg.functions module, which a session loads once from
--     azure_local_ai.python_lib_dir/<extension version> (load()). A failed call returns NULL and
--     leaves its error pending; the public function then calls raise_pending(), which raises it
--     with its SQLSTATE, message, detail and hint. Raising there, in the public function's own
--     statement, keeps the internals out of the error's CONTEXT.
--
-- Settings (GUCs, in postgresql.conf or per session):
--   azure_local_ai.runtime_socket   the runtime's Unix socket  (default /run/pglocalai/pglocalai.sock)
--   azure_local_ai.python_lib_dir   where the Python package lives (default /usr/local/lib/pglocalai)

\echo Use "CREATE EXTENSION azure_local_ai CASCADE" to load this file. \quit

-- The schema azure_local_ai is created by CREATE EXTENSION (schema = in the control file).
grant usage on schema azure_local_ai to public;

create schema azure_local_ai_internal;
revoke all on schema azure_local_ai_internal from public;
comment on schema azure_local_ai_internal is
'internals of azure_local_ai: not for direct use, and not usable by PUBLIC';

-- Administrators (set_setting) are superusers and the roles a superuser granted
-- azure_local_ai_admin to directly. The role exists from installation on, so that nobody else can
-- create it first; a role created beforehand is accepted only if no ordinary role can administer
-- it (on PostgreSQL 16 and later, a CREATEROLE role that creates a role holds ADMIN OPTION on it).
do $block$
begin
    if pg_catalog.to_regrole('azure_local_ai_admin') is null then
        create role azure_local_ai_admin nologin;
    elsif exists (select from pg_catalog.pg_roles r
                  where r.rolname operator(pg_catalog.=) 'azure_local_ai_admin'
                    and (r.rolcanlogin or r.rolsuper))
       or exists (select from pg_catalog.pg_auth_members m
                  join pg_catalog.pg_roles holder on holder.oid operator(pg_catalog.=) m.member
                  where m.roleid operator(pg_catalog.=) 'azure_local_ai_admin'::regrole
                    and m.admin_option and not holder.rolsuper) then
        raise exception 'role "azure_local_ai_admin" exists and is not safe to use'
            using errcode = 'insufficient_privilege',
                  detail = 'it can log in, is a superuser, or an ordinary role can administer it',
                  hint = 'a superuser should drop it (DROP ROLE azure_local_ai_admin) and create '
                         'the extension again';
    end if;
end
$block$;
grant usage on schema azure_local_ai_internal to azure_local_ai_admin;

-------------------------------------------------------------------------------------------------
-- internal: loading the Python package, reporting errors

create function azure_local_ai_internal.loaded() returns boolean
as $python$
return "azure_local_ai" in GD
$python$
language plpython3u volatile strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.loaded() is
'whether this session has loaded the pglocalai Python package';

create function azure_local_ai_internal.py_load(lib_dir text, version text) returns boolean
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
                  'install it with "pglocalai install" or "make install-ext", or set '
                  f"azure_local_ai.python_lib_dir to the folder that holds {version}/pglocalai")

# Any role may SET azure_local_ai.python_lib_dir, and this code runs as the server's user: import
# only files that nobody but root and the server's user can change. Keep in step with
# pglocalai.pg.trust, which cannot be imported before this check has passed.
def untrusted(path, sticky_ok):
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return f'"{path}" is a symbolic link'
    if info.st_uid not in (0, os.geteuid()):
        return f'"{path}" belongs to uid {info.st_uid}'
    if sticky_ok and info.st_mode & stat.S_ISVTX:
        return None  # like /tmp: others may add entries, not replace ours
    if info.st_mode & stat.S_IWOTH:
        return f'"{path}" is writable by every user'
    # a POSIX ACL that lets a named user or group write shows here too: its mask is the group bits
    if info.st_mode & stat.S_IWGRP:
        return f'"{path}" is writable by its group or through an access control list'
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
                      "the server's user, and no other user may be able to write to them")

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
                  f"{type(exc).__name__}: {exc}", 'reinstall it with "pglocalai install"')
served = getattr(pglocalai, "EXTENSION_VERSIONS", (pglocalai.__version__,))
if version not in served:
    return refuse("58000",
                  f"the pglocalai package {pglocalai.__version__} does not serve version "
                  f"{version} of the extension",
                  f'the package was loaded from "{base}"; it serves {", ".join(served)}',
                  "install the package that matches, or update the extension with "
                  "ALTER EXTENSION azure_local_ai UPDATE")
GD["azure_local_ai"] = functions
return True
$python$
language plpython3u volatile strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.py_load(text, text) is
'imports the pglocalai package from lib_dir/version after checking who can change its files';

-- The version is the extension's own (read here, never an argument) and the folder comes from
-- the setting. SECURITY DEFINER: an administrator may load the package without being able to
-- call py_load with a version of its choosing.
create function azure_local_ai_internal.load() returns boolean
as $func$
    select azure_local_ai_internal.py_load(
        coalesce(nullif(pg_catalog.current_setting('azure_local_ai.python_lib_dir', true), ''),
                 '/usr/local/lib/pglocalai'),
        (select e.extversion from pg_catalog.pg_extension e
         where e.extname operator(pg_catalog.=) 'azure_local_ai'))
$func$
language sql volatile parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.load() is
'loads the pglocalai package of the installed extension version; false with a pending error';

create function azure_local_ai_internal.take_error
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

comment on function azure_local_ai_internal.take_error() is
'takes the error that the last failed internal call stored for this session';

-- Called as coalesce(<internal call>, raise_pending(NULL::<type>)): the type argument only makes
-- the expression well typed. RAISE adds no CONTEXT line for the function that raises.
create function azure_local_ai_internal.raise_pending(anyelement) returns anyelement
as $func$
declare
    e record;
begin
    select * into e from azure_local_ai_internal.take_error();
    if e.sqlstate is null then
        raise exception 'the pglocalai call failed without reporting why'
            using errcode = 'internal_error';
    elsif e.detail is null and e.hint is null then
        raise exception using errcode = e.sqlstate, message = e.message;
    elsif e.hint is null then
        raise exception using errcode = e.sqlstate, message = e.message, detail = e.detail;
    elsif e.detail is null then
        raise exception using errcode = e.sqlstate, message = e.message, hint = e.hint;
    end if;
    raise exception using errcode = e.sqlstate, message = e.message, detail = e.detail,
        hint = e.hint;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.raise_pending(anyelement) is
'raises the error that the last failed internal call stored for this session';

-------------------------------------------------------------------------------------------------
-- internal: the calls into Python. Each py_* returns NULL with a pending error when it fails,
-- also when this session has not loaded the package yet; the caller then loads it (once per
-- session, in PL/pgSQL: PL/Python's own queries are refused inside parallel workers) and retries.

create function azure_local_ai_internal.py_embed
( model_uri text
, input text
, timeout_ms integer
, socket text
) returns text
as $python$
m = GD.get("azure_local_ai")
return m and m.embed_text(GD, model_uri, input, timeout_ms, socket)
$python$
language plpython3u volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.py_embed(text, text, integer, text) is
'one embedding as real[] text, or NULL with a pending error';

create function azure_local_ai_internal.py_embed_many
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

comment on function azure_local_ai_internal.py_embed_many(text, text[], bigint, bigint, integer, text) is
'embeddings as real[] text in input order; a row with a NULL ord means a pending error';

create function azure_local_ai_internal.py_request
( operation text
, arguments jsonb
, timeout_ms integer
, socket text
) returns jsonb
as $python$
m = GD.get("azure_local_ai")
return m and m.request(GD, operation, arguments, timeout_ms, socket)
$python$
language plpython3u volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.py_request(text, jsonb, integer, text) is
'a read-only call to the runtime, or NULL with a pending error';

create function azure_local_ai_internal.embed(model_uri text, input text, timeout_ms integer)
returns real[]
as $func$
declare
    socket text := pg_catalog.current_setting('azure_local_ai.runtime_socket', true);
    result text := azure_local_ai_internal.py_embed(model_uri, input, timeout_ms, socket);
begin
    if result is null and not azure_local_ai_internal.loaded()
            and azure_local_ai_internal.load() then
        result := azure_local_ai_internal.py_embed(model_uri, input, timeout_ms, socket);
    end if;
    return result::real[];
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.embed(text, text, integer) is
'one embedding, or NULL with a pending error';

create function azure_local_ai_internal.request(operation text, arguments jsonb, timeout_ms integer)
returns jsonb
as $func$
declare
    socket text := pg_catalog.current_setting('azure_local_ai.runtime_socket', true);
    result jsonb := azure_local_ai_internal.py_request(operation, arguments, timeout_ms, socket);
begin
    if result is null and not azure_local_ai_internal.loaded()
            and azure_local_ai_internal.load() then
        result := azure_local_ai_internal.py_request(operation, arguments, timeout_ms, socket);
    end if;
    return result;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.request(text, jsonb, integer) is
'a read-only call to the runtime, or NULL with a pending error';

create function azure_local_ai_internal.embed_many
( model_uri text
, inputs text[]
, ids_count bigint
, batch_size bigint
, timeout_ms integer
) returns table (ord bigint, embedding real[])
as $func$
begin
    if azure_local_ai_internal.loaded() or azure_local_ai_internal.load() then
        return query
            select e.ord, e.embedding::real[]
            from azure_local_ai_internal.py_embed_many(model_uri, inputs, ids_count, batch_size,
                timeout_ms, pg_catalog.current_setting('azure_local_ai.runtime_socket', true)) e;
    else
        return query select null::bigint, null::real[];
    end if;
end
$func$
language plpgsql volatile parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.embed_many(text, text[], bigint, bigint, integer) is
'embeddings in input order; a row with a NULL ord means a pending error';

-- Administrators: superusers, and roles that a superuser granted azure_local_ai_admin to directly.
-- Only direct grants made by a superuser count: on PostgreSQL 15 any CREATEROLE role may grant
-- itself membership in any ordinary role, and such a grant names it as the grantor.
create function azure_local_ai_internal.is_admin() returns boolean
as $func$
    select coalesce((select r.rolsuper from pg_catalog.pg_roles r
                     where r.rolname operator(pg_catalog.=) current_user), false)
        or exists (select from pg_catalog.pg_auth_members m
                   join pg_catalog.pg_roles member on member.oid operator(pg_catalog.=) m.member
                   join pg_catalog.pg_roles grantor on grantor.oid operator(pg_catalog.=) m.grantor
                   where m.roleid operator(pg_catalog.=) 'azure_local_ai_admin'::regrole
                     and member.rolname operator(pg_catalog.=) current_user
                     and grantor.rolsuper)
$func$
language sql stable parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.is_admin() is
'whether the current user is a superuser or was granted azure_local_ai_admin by a superuser';

create function azure_local_ai_internal.set_setting(key text, value text) returns jsonb
as $python$
# The check runs here, as the caller (SECURITY INVOKER all the way), whoever calls this.
is_admin = plpy.execute("select azure_local_ai_internal.is_admin() as ok")[0]["ok"]
if "azure_local_ai" not in GD:
    plpy.execute("select azure_local_ai_internal.load()")
m = GD.get("azure_local_ai")
socket = plpy.execute("select pg_catalog.current_setting('azure_local_ai.runtime_socket', true)"
                      " as s")[0]["s"]
return m and m.set_setting(GD, key, value, socket, is_admin)
$python$
language plpython3u volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.set_setting(text, text) is
'changes a runtime setting (administrators only), or NULL with a pending error';

revoke execute on all functions in schema azure_local_ai_internal from public;
grant execute on function
    azure_local_ai_internal.set_setting(text, text),
    azure_local_ai_internal.is_admin(),
    azure_local_ai_internal.loaded(),
    azure_local_ai_internal.load(),
    azure_local_ai_internal.take_error(),
    azure_local_ai_internal.raise_pending(anyelement)
    to azure_local_ai_admin;

-------------------------------------------------------------------------------------------------
-- create_embeddings: the Azure signatures

create function azure_local_ai.create_embeddings
( model_uri text
, input text
, timeout_ms integer default 3600000
) returns real[]
as $func$
    select coalesce(azure_local_ai_internal.embed(model_uri, input, timeout_ms),
                    azure_local_ai_internal.raise_pending(null::real[]))
$func$
language sql immutable strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.create_embeddings(text, text, integer) is
'the embedding of input by model model_uri; immutable, so usable in generated columns and indexes';

create function azure_local_ai.create_embeddings
( model_uri text
, inputs text[]
, batch_size bigint default 128
, timeout_ms integer default 3600000
) returns table (embedding real[])
as $func$
    select case when e.ord is null then azure_local_ai_internal.raise_pending(null::real[])
                else e.embedding end
    from azure_local_ai_internal.embed_many(model_uri, inputs, null, batch_size, timeout_ms) e
$func$
language sql immutable strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.create_embeddings(text, text[], bigint, integer) is
'one embedding per element of inputs, in order (NULL for NULL), sent batch_size at a time';

-- ROWS FROM zips the ids with the embeddings by position, without indexing into ids
create function azure_local_ai.create_embeddings
( model_uri text
, inputs text[]
, ids anyarray
, batch_size bigint default 128
, timeout_ms integer default 3600000
) returns table (id anyelement, embedding real[])
as $func$
    select z.id,
           case when z.ord is null then azure_local_ai_internal.raise_pending(null::real[])
                else z.embedding end
    from rows from (
        pg_catalog.unnest(ids),
        azure_local_ai_internal.embed_many(model_uri, inputs, pg_catalog.cardinality(ids),
            batch_size, timeout_ms)
    ) as z(id, ord, embedding)
$func$
language sql immutable strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.create_embeddings(text, text[], anyarray, bigint, integer) is
'one (id, embedding) row per element of inputs, paired by position with ids';

-------------------------------------------------------------------------------------------------
-- settings of the runtime

create function azure_local_ai.get_setting
( keys text[] default array[]::text[]
, timeout_ms integer default 3600000
) returns jsonb
as $func$
    select coalesce(azure_local_ai_internal.request('get_settings',
                        pg_catalog.jsonb_build_object('keys', keys), timeout_ms),
                    azure_local_ai_internal.raise_pending(null::jsonb))
$func$
language sql volatile strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.get_setting(text[], integer) is
'runtime settings as a JSON object: those named in keys, all of them when keys is empty';

create function azure_local_ai.get_setting
( key text
, timeout_ms integer default 3600000
) returns text
as $func$
    select azure_local_ai.get_setting(array[key], timeout_ms) operator(pg_catalog.->>) key
$func$
language sql volatile strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.get_setting(text, integer) is
'the value of one runtime setting as text';

-- SECURITY INVOKER, unlike the others: who calls it decides whether it is allowed. EXECUTE is
-- granted to azure_local_ai_admin only, and the internal function checks is_admin() again, so a
-- wide grant such as GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA does not open it up.
create function azure_local_ai.set_setting(key text, value text) returns jsonb
as $func$
begin
    -- only administrators can use the internals; anyone else gets the reason, not a catalog error
    if not pg_catalog.has_schema_privilege('azure_local_ai_internal', 'usage') then
        raise exception 'permission denied to change the settings of the pglocalai runtime'
            using errcode = 'insufficient_privilege',
                  detail = 'only superusers and roles that a superuser granted '
                           '"azure_local_ai_admin" may change them: they apply to every '
                           'database served by the runtime',
                  hint = 'ask a superuser to run it, or to grant you the role '
                         '"azure_local_ai_admin"';
    end if;
    return coalesce(azure_local_ai_internal.set_setting(key, value),
                    azure_local_ai_internal.raise_pending(null::jsonb));
end
$func$
language plpgsql volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.set_setting(text, text) is
'changes a runtime setting for every database it serves (administrators only); returns all settings';

revoke execute on function azure_local_ai.set_setting(text, text) from public;
grant execute on function azure_local_ai.set_setting(text, text) to azure_local_ai_admin;

-------------------------------------------------------------------------------------------------
-- models, tokens, statistics, version

create function azure_local_ai.model_metadata(model_uri text, timeout_ms integer default 30000)
returns jsonb
as $func$
    select coalesce(azure_local_ai_internal.request('model_metadata',
                        pg_catalog.jsonb_build_object('model', model_uri), timeout_ms),
                    azure_local_ai_internal.raise_pending(null::jsonb))
$func$
language sql stable strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.model_metadata(text, integer) is
'the metadata of an installed model (dimensions, max tokens, pooling, variants, licence, ...)';

create function azure_local_ai.list_models(timeout_ms integer default 30000)
returns table
( model_uri text
, dimensions integer
, max_tokens integer
, variant text
, variants text[]
, loaded boolean
)
as $func$
    select m.model_uri, m.dimensions, m.max_tokens, m.variant, m.variants, m.loaded
    from pg_catalog.jsonb_to_recordset(coalesce(
            azure_local_ai_internal.request('list_models', '{}', timeout_ms),
            azure_local_ai_internal.raise_pending(null::jsonb)))
        as m(model_uri text, dimensions integer, max_tokens integer, variant text,
             variants text[], loaded boolean)
    order by m.model_uri
$func$
language sql volatile strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.list_models(integer) is
'the models installed in the runtime: URI, dimensions, max tokens, default variant, variants, loaded';

create function azure_local_ai.token_count(model_uri text, input text,
                                           timeout_ms integer default 30000)
returns integer
as $func$
    select coalesce(azure_local_ai_internal.request('token_count',
                        pg_catalog.jsonb_build_object('model', model_uri, 'input', input),
                        timeout_ms),
                    azure_local_ai_internal.raise_pending(null::jsonb))::integer
$func$
language sql immutable strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.token_count(text, text, integer) is
'the number of tokens the model sees for input, <s> and </s> included, before truncation';

create function azure_local_ai.runtime_stats(timeout_ms integer default 30000) returns jsonb
as $func$
    select coalesce(azure_local_ai_internal.request('runtime_stats', '{}', timeout_ms),
                    azure_local_ai_internal.raise_pending(null::jsonb))
$func$
language sql volatile strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.runtime_stats(integer) is
'the runtime''s statistics: requests, texts, tokens, batches, queue, latency, per model';

create function azure_local_ai.version(timeout_ms integer default 5000) returns text
as $func$
    select coalesce(azure_local_ai_internal.request('version', '{}', timeout_ms),
                    azure_local_ai_internal.raise_pending(null::jsonb)) operator(pg_catalog.#>>) '{}'
$func$
language sql volatile strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.version(integer) is
'the versions of the extension and of the runtime it reaches (and where it reaches it)';

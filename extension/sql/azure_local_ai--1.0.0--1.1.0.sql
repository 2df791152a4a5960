-- azure_local_ai 1.0.0 -> 1.1.0: the vectorizer, embeddings that keep themselves current.
--
-- There is no full 1.1.0 script: CREATE EXTENSION runs azure_local_ai--1.0.0.sql and then this
-- file, so a fresh install and an upgraded one are the same by construction. Frozen once released.
--
-- How it works (docs/vectorizer.md has the whole story):
--   * azure_local_ai.vectorizer is the catalog: one row per vectorizer. Row-level security lets
--     the owner of a source table (or a member of the owning role) insert, change and delete the
--     rows of its own tables; the public functions create_vectorizer, alter_vectorizer and
--     drop_vectorizer are SECURITY INVOKER and only write that catalog. The catalog's own
--     triggers (SECURITY DEFINER, in azure_local_ai_internal) then build or remove what the row
--     describes. A definer never has to guess who called it: the row-level security check ran as
--     the caller, and the definer only carries out rows that passed it.
--   * Per vectorizer N: azure_local_ai.vectorizer_N_queue (rows to embed: seq, k1..kn = the
--     primary key, queued_at) and azure_local_ai.vectorizer_N_failures (k1..kn, error, attempts,
--     retry time). Both belong to the extension's owner; the source table's owner gets every
--     privilege on them WITH GRANT OPTION, so it can run a worker or grant one its privileges.
--   * Statement-level triggers on the source with transition tables call the generated function
--     azure_local_ai_internal.vectorizer_N_enqueue() (SECURITY DEFINER): one INSERT into the
--     queue per statement, one NOTIFY. It enqueues a key only when the input changed, and only
--     when no unclaimed entry for it exists (probe FOR KEY SHARE SKIP LOCKED): an entry a worker
--     is processing is locked, so a change made meanwhile gets an entry of its own and writers
--     never wait for a worker.
--   * Exact, cheap pending counts: triggers on each queue append (vectorizer, delta) rows to
--     azure_local_ai_internal.vectorizer_queue_count; the sum is compacted now and then.
--   * Event triggers follow renames of the input and target columns, re-grant the queue after
--     ALTER TABLE ... OWNER, remove a vectorizer whose table is dropped and disable one whose
--     column, chunks table or primary key goes away (its triggers are dropped, so writes go on).
--
-- Every function below has a pinned search_path (pg_catalog, pg_temp): plain operators resolve
-- in pg_catalog, and every object of ours is schema-qualified.

\echo Use "ALTER EXTENSION azure_local_ai UPDATE TO '1.1.0'" to load this file. \quit

create schema if not exists azure_local_ai_internal;
revoke all on schema azure_local_ai_internal from public;

-------------------------------------------------------------------------------------------------
-- the catalog

create table azure_local_ai.vectorizer
( id integer generated always as identity primary key
, source regclass not null
, input_column name not null
, target_column name
, chunks_table regclass
, model_uri text not null
, prefix text not null default ''
, chunk_tokens integer
, overlap_tokens integer not null default 0
, dimensions integer not null
, generation integer not null default 1
, created_at timestamptz not null default pg_catalog.now()
, created_by name not null default current_user
, disabled_reason text
  -- maintained by the extension (the triggers of this table and its event triggers):
, key_columns jsonb
, input_attnum smallint
, target_attnum smallint
, chunk_key_columns name[]
, check ((target_column is null) <> (chunks_table is null))
);

comment on table azure_local_ai.vectorizer is
'the vectorizers: which column of which table is embedded by which model into which destination';
comment on column azure_local_ai.vectorizer.generation is
'bumped by alter_vectorizer; every row is embedded again with the new settings';
comment on column azure_local_ai.vectorizer.key_columns is
'internal: the primary key of the source ([{name, type, collation, eq}] in key order)';
comment on column azure_local_ai.vectorizer.input_attnum is
'internal: attnum of the input column, to follow renames (names are authoritative)';

-- pg_dump saves the rows (the tables they describe are ordinary objects and are dumped as such)
select pg_catalog.pg_extension_config_dump('azure_local_ai.vectorizer', '');
select pg_catalog.pg_extension_config_dump('azure_local_ai.vectorizer_id_seq', '');

alter table azure_local_ai.vectorizer enable row level security;

create or replace function azure_local_ai_internal.owns(rel regclass) returns boolean
as $func$
    select coalesce((select pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
                     from pg_catalog.pg_class c where c.oid = rel), false)
$func$
language sql stable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.owns(regclass) is
'internal: whether the current role owns rel or is a member of the role that owns it';

create or replace function azure_local_ai_internal.can_read(rel regclass) returns boolean
as $func$
    -- runs as the caller, who may not use azure_local_ai_internal: pg_catalog only
    select coalesce(pg_catalog.has_any_column_privilege(rel::oid, 'SELECT'), false)
        or coalesce((select pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
                     from pg_catalog.pg_class c where c.oid = rel), false)
$func$
language sql stable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.can_read(regclass) is
'internal: whether the current role may read some column of rel (workers, status)';

create policy vectorizer_read on azure_local_ai.vectorizer for select
    using (azure_local_ai_internal.can_read(source));
create policy vectorizer_create on azure_local_ai.vectorizer for insert
    with check (azure_local_ai_internal.owns(source));
create policy vectorizer_change on azure_local_ai.vectorizer for update
    using (azure_local_ai_internal.owns(source)) with check (azure_local_ai_internal.owns(source));
create policy vectorizer_drop on azure_local_ai.vectorizer for delete
    using (azure_local_ai_internal.owns(source));

grant select, delete on azure_local_ai.vectorizer to public;
grant insert (source, input_column, target_column, chunks_table, model_uri, prefix, chunk_tokens,
              overlap_tokens, dimensions) on azure_local_ai.vectorizer to public;
grant update (model_uri, prefix, chunk_tokens, overlap_tokens, dimensions)
    on azure_local_ai.vectorizer to public;

-- Exact pending counts without a hot row: every change of a queue appends a delta.
create table azure_local_ai_internal.vectorizer_queue_count
( vectorizer_id integer not null
, delta bigint not null
, at timestamptz not null default pg_catalog.clock_timestamp()
);
create index on azure_local_ai_internal.vectorizer_queue_count (vectorizer_id, at);
select pg_catalog.pg_extension_config_dump('azure_local_ai_internal.vectorizer_queue_count', '');

comment on table azure_local_ai_internal.vectorizer_queue_count is
'internal: +n when n keys were queued, -n when n were taken off a queue; sum = pending';

-- Workers report themselves here (heartbeat and the last error that is not a row's own).
create table azure_local_ai.vectorizer_worker
( id uuid primary key default pg_catalog.gen_random_uuid()
, worker_role regrole not null default current_user::regrole
, host text
, pid integer
, version text
, vectorizers integer[]
, started_at timestamptz not null default pg_catalog.now()
, heartbeat_at timestamptz not null default pg_catalog.now()
  -- the worker's own session: while it exists the worker is alive (a SIGKILL ends it at once)
, backend_pid integer not null default pg_catalog.pg_backend_pid()
, backend_start timestamptz
, last_error text
, last_error_at timestamptz
, last_error_vectorizer integer
);

comment on table azure_local_ai.vectorizer_worker is
'the running vectorizer workers (pglocalai worker): heartbeat and last error; each role sees its own';

alter table azure_local_ai.vectorizer_worker enable row level security;
create policy vectorizer_worker_own on azure_local_ai.vectorizer_worker
    using (worker_role = current_user::regrole) with check (worker_role = current_user::regrole);
grant select, insert, update, delete on azure_local_ai.vectorizer_worker to public;

-------------------------------------------------------------------------------------------------
-- internal: resolving the source

create or replace function azure_local_ai_internal.vectorizer_primary_key(rel regclass)
returns jsonb
as $func$
    -- [{name, type, collation, eq, attnum}] in key order; NULL when rel has no primary key.
    -- eq is the btree equality operator of the key column's operator class, schema-qualified,
    -- so keys of any type (a domain, an extension's type) compare as the index compares them.
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'name', a.attname,
               'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
               'collation', case when a.attcollation <> 0 and a.attcollation <> t.typcollation
                                 then pg_catalog.format('%I.%I', cn.nspname, co.collname) end,
               'eq', pg_catalog.format('operator(%I.%s)', opn.nspname, op.oprname),
               'attnum', a.attnum)
           order by k.pos)
    from pg_catalog.pg_index i
    cross join lateral rows from (pg_catalog.unnest(i.indkey::int2[]),
                                  pg_catalog.unnest(i.indclass::oid[]))
        with ordinality as k(attnum, opclass, pos)
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    join pg_catalog.pg_type t on t.oid = a.atttypid
    left join pg_catalog.pg_collation co on co.oid = a.attcollation
    left join pg_catalog.pg_namespace cn on cn.oid = co.collnamespace
    join pg_catalog.pg_opclass oc on oc.oid = k.opclass
    join pg_catalog.pg_amop ao on ao.amopfamily = oc.opcfamily and ao.amopstrategy = 3
        and ao.amoplefttype = oc.opcintype and ao.amoprighttype = oc.opcintype
    join pg_catalog.pg_operator op on op.oid = ao.amopopr
    join pg_catalog.pg_namespace opn on opn.oid = op.oprnamespace
    where i.indrelid = rel and i.indisprimary and k.pos <= i.indnkeyatts
$func$
language sql stable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_primary_key(regclass) is
'internal: the primary key of rel as [{name, type, collation, eq, attnum}], NULL if it has none';

create or replace function azure_local_ai_internal.vectorizer_column
( rel regclass
, known_name name
, known_attnum smallint
, out column_name name
, out column_attnum smallint
)
as $func$
    -- names are authoritative (they survive pg_dump, attnums may not); the attnum only serves to
    -- follow a rename: the stored name is gone and the stored attnum is a live column
    select coalesce(byname.attname, bynum.attname, known_name),
           coalesce(byname.attnum, bynum.attnum, known_attnum)
    from (select 1) as one
    left join pg_catalog.pg_attribute byname
        on byname.attrelid = rel and byname.attname = known_name and not byname.attisdropped
        and byname.attnum > 0
    left join pg_catalog.pg_attribute bynum
        on bynum.attrelid = rel and bynum.attnum = known_attnum and not bynum.attisdropped
        and bynum.attnum > 0 and byname.attname is null
$func$
language sql stable parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_column(regclass, name, smallint) is
'internal: the current name and attnum of a column known by name (and attnum, to follow renames)';

create or replace function azure_local_ai_internal.vectorizer_type(rel regclass, col name)
returns table (type_oid oid, typmod integer, type_name text, is_vector boolean)
as $func$
    select a.atttypid, a.atttypmod, pg_catalog.format_type(a.atttypid, a.atttypmod),
           t.typname = 'vector' and exists (
               select from pg_catalog.pg_depend d
               join pg_catalog.pg_extension e on e.oid = d.refobjid
               where d.classid = 'pg_catalog.pg_type'::regclass and d.objid = t.oid
                 and d.deptype = 'e' and e.extname = 'vector')
    from pg_catalog.pg_attribute a
    join pg_catalog.pg_type t on t.oid = a.atttypid
    where a.attrelid = rel and a.attname = col and not a.attisdropped and a.attnum > 0
$func$
language sql stable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_type(regclass, name) is
'internal: the type of a column, and whether it is pgvector''s vector';

-------------------------------------------------------------------------------------------------
-- internal: checking a catalog row (runs as the caller, in the catalog's BEFORE trigger)

create or replace function azure_local_ai_internal.vectorizer_resolve(v azure_local_ai.vectorizer)
returns azure_local_ai.vectorizer
as $func$
declare
    rel record;
    col record;
    typ record;
    pk jsonb;
    chunk_pk jsonb;
    n integer;
    other integer;
begin
    select c.relname, c.relkind, c.relowner into rel from pg_catalog.pg_class c
    where c.oid = v.source;
    if rel.relkind is null or rel.relkind not in ('r', 'p') then
        raise exception '"%" is not a table', v.source using errcode = 'wrong_object_type',
            hint = 'a vectorizer reads an ordinary or partitioned table';
    end if;
    pk := azure_local_ai_internal.vectorizer_primary_key(v.source);
    if pk is null then
        raise exception 'table % has no primary key', v.source
            using errcode = 'object_not_in_prerequisite_state',
            detail = 'the vectorizer''s queue and destination refer to rows by their primary key',
            hint = pg_catalog.format('add one: ALTER TABLE %s ADD PRIMARY KEY (...)', v.source);
    end if;
    v.key_columns := pk;

    select * into col from azure_local_ai_internal.vectorizer_column(v.source, v.input_column,
        v.input_attnum);
    select t.typcategory into typ from pg_catalog.pg_attribute a
    join pg_catalog.pg_type t on t.oid = a.atttypid
    where a.attrelid = v.source and a.attnum = col.column_attnum and not a.attisdropped;
    if typ.typcategory is null then
        raise exception 'column "%" of table % does not exist', v.input_column, v.source
            using errcode = 'undefined_column';
    elsif typ.typcategory <> 'S' then
        raise exception 'input column "%" of table % is of type %, not a string type',
            v.input_column, v.source,
            (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
             where a.attrelid = v.source and a.attnum = col.column_attnum)
            using errcode = 'datatype_mismatch',
            hint = 'embed a text, varchar or char column, or a generated text column built from others';
    end if;
    v.input_column := col.column_name;
    v.input_attnum := col.column_attnum;

    if v.dimensions is null or v.dimensions < 1 then
        raise exception 'dimensions must be a positive number, not %', v.dimensions
            using errcode = 'invalid_parameter_value';
    end if;
    if v.model_uri is null or v.model_uri = '' then
        raise exception 'model_uri must not be empty' using errcode = 'invalid_parameter_value';
    end if;

    if v.target_column is not null then
        if v.chunk_tokens is not null or v.overlap_tokens <> 0 then
            raise exception 'chunk_tokens and overlap_tokens apply only to a chunks_table'
                using errcode = 'invalid_parameter_value';
        end if;
        select * into col from azure_local_ai_internal.vectorizer_column(v.source, v.target_column,
            v.target_attnum);
        select * into typ from azure_local_ai_internal.vectorizer_type(v.source, col.column_name);
        if typ.type_oid is null then
            raise exception 'column "%" of table % does not exist', v.target_column, v.source
                using errcode = 'undefined_column',
                hint = pg_catalog.format('add it: ALTER TABLE %s ADD COLUMN %I vector(%s)',
                                         v.source, v.target_column, v.dimensions);
        end if;
        if not (typ.is_vector and (typ.typmod = v.dimensions or typ.typmod < 0))
           and typ.type_oid <> 'pg_catalog.float4[]'::regtype then
            raise exception 'target column "%" of table % is of type %, not vector(%) or real[]',
                col.column_name, v.source, typ.type_name, v.dimensions
                using errcode = 'datatype_mismatch',
                detail = pg_catalog.format('model %s gives vectors of %s dimensions',
                                           v.model_uri, v.dimensions),
                hint = pg_catalog.format('use a column of type vector(%s) or real[]', v.dimensions);
        end if;
        if exists (select from pg_catalog.pg_attribute a
                   where a.attrelid = v.source and a.attnum = col.column_attnum
                     and a.attgenerated <> '') then
            raise exception 'target column "%" of table % is a generated column',
                col.column_name, v.source using errcode = 'wrong_object_type',
                hint = 'the worker writes the target column: drop the generated column and add a '
                       'plain one, which keeps its vectors when the model changes';
        end if;
        if col.column_attnum = v.input_attnum
           or pk @> pg_catalog.jsonb_build_array(
                  pg_catalog.jsonb_build_object('attnum', col.column_attnum)) then
            raise exception 'target column "%" is the input column or part of the primary key',
                col.column_name using errcode = 'invalid_parameter_value';
        end if;
        v.target_column := col.column_name;
        v.target_attnum := col.column_attnum;
        select pg_catalog.min(o.id) into other from azure_local_ai.vectorizer o
        where o.id <> v.id and o.source = v.source and o.target_column = v.target_column;
    else
        if v.chunk_tokens is null or v.chunk_tokens < 8 then
            raise exception 'chunk_tokens must be at least 8, not %', v.chunk_tokens
                using errcode = 'invalid_parameter_value';
        end if;
        if v.overlap_tokens is null or v.overlap_tokens < 0 or v.overlap_tokens * 2 > v.chunk_tokens then
            raise exception 'overlap_tokens must be between 0 and half of chunk_tokens (%), not %',
                v.chunk_tokens, v.overlap_tokens using errcode = 'invalid_parameter_value';
        end if;
        if (select c.relowner from pg_catalog.pg_class c where c.oid = v.chunks_table)
           is distinct from rel.relowner then
            raise exception 'chunks table % does not belong to the owner of table %',
                v.chunks_table, v.source using errcode = 'insufficient_privilege';
        end if;
        chunk_pk := azure_local_ai_internal.vectorizer_primary_key(v.chunks_table);
        n := pg_catalog.jsonb_array_length(pk);
        if chunk_pk is null or pg_catalog.jsonb_array_length(chunk_pk) <> n + 1
           or (select pg_catalog.bool_or(c.e ->> 'type' <> s.e ->> 'type')
               from pg_catalog.jsonb_array_elements(chunk_pk) with ordinality c(e, pos)
               join pg_catalog.jsonb_array_elements(pk) with ordinality s(e, pos) using (pos)) then
            raise exception 'chunks table % does not have the primary key of % plus chunk_seq',
                v.chunks_table, v.source using errcode = 'invalid_table_definition';
        end if;
        select * into typ from azure_local_ai_internal.vectorizer_type(v.chunks_table, 'embedding');
        if not coalesce(typ.is_vector and (typ.typmod = v.dimensions or typ.typmod < 0), false) then
            raise exception 'column "embedding" of chunks table % is not vector(%)',
                v.chunks_table, v.dimensions using errcode = 'datatype_mismatch',
                detail = pg_catalog.format('model %s gives vectors of %s dimensions',
                                           v.model_uri, v.dimensions);
        end if;
        v.chunk_key_columns := array(
            select c.e ->> 'name' from pg_catalog.jsonb_array_elements(chunk_pk)
                with ordinality c(e, pos) where c.pos <= n order by c.pos);
        select pg_catalog.min(o.id) into other from azure_local_ai.vectorizer o
        where o.id <> v.id and o.chunks_table = v.chunks_table;
    end if;
    if other is not null then
        raise exception 'vectorizer % already writes to this destination', other
            using errcode = 'duplicate_object',
            hint = pg_catalog.format('change it with azure_local_ai.alter_vectorizer(%s, ...)', other);
    end if;
    return v;
end
$func$
language plpgsql stable parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_resolve(azure_local_ai.vectorizer) is
'internal: checks a vectorizer row against its tables and fills in the key, attnums and chunk key';

-------------------------------------------------------------------------------------------------
-- internal: the objects of one vectorizer (all of these run as the extension's owner)

create or replace function azure_local_ai_internal.vectorizer_relation(vid integer, kind text)
returns text
as $func$
    select case kind
        when 'queue' then pg_catalog.format('azure_local_ai.%I', 'vectorizer_' || vid || '_queue')
        when 'failures' then pg_catalog.format('azure_local_ai.%I', 'vectorizer_' || vid || '_failures')
        when 'enqueue' then pg_catalog.format('azure_local_ai_internal.%I', 'vectorizer_' || vid || '_enqueue')
    end
$func$
language sql immutable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_relation(integer, text) is
'internal: the qualified name of the queue, failures table or enqueue function of a vectorizer';

create or replace function azure_local_ai_internal.vectorizer_keys
( v azure_local_ai.vectorizer
, template text
, separator text default ', '
) returns text
as $func$
    -- template placeholders: %1$s = k<pos>, %2$I = the source column, %3$s = equality operator,
    -- %4$s = type, %5$I = the chunks table's column
    select pg_catalog.string_agg(pg_catalog.format(template, 'k' || e.pos, e.k ->> 'name',
               e.k ->> 'eq', e.k ->> 'type', v.chunk_key_columns[e.pos]), separator order by e.pos)
    from pg_catalog.jsonb_array_elements(v.key_columns) with ordinality as e(k, pos)
$func$
language sql stable parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_keys(azure_local_ai.vectorizer, text, text) is
'internal: a list built from the primary-key columns of a vectorizer (for generated SQL)';

create or replace function azure_local_ai_internal.vectorizer_enqueue_filter
( v azure_local_ai.vectorizer
, alias text
) returns text
as $func$
    -- which new rows need work: a chunks table has nothing to do for a NULL input, a target
    -- column only when the input is not NULL or an old vector must be cleared
    select case when v.chunks_table is not null
                then pg_catalog.format('%s.%I is not null', alias, v.input_column)
                else pg_catalog.format('(%1$s.%2$I is not null or %1$s.%3$I is not null)', alias,
                                       v.input_column, v.target_column) end
$func$
language sql stable parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_enqueue_filter(azure_local_ai.vectorizer, text) is
'internal: the condition under which a new row needs embedding';

create or replace function azure_local_ai_internal.vectorizer_build_enqueue(v azure_local_ai.vectorizer)
returns void
as $func$
declare
    q text := azure_local_ai_internal.vectorizer_relation(v.id, 'queue');
    f text := azure_local_ai_internal.vectorizer_relation(v.id, 'failures');
    fn text := azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue');
    cols text := azure_local_ai_internal.vectorizer_keys(v, '%1$s');
    probe text := 'select from %s q where %s for key share skip locked';
    body text;
    first_key text := v.key_columns -> 0 ->> 'name';
    on_delete text;
begin
    if v.chunks_table is null then
        on_delete := pg_catalog.format('delete from %s f using old_rows o where %s;', f,
            azure_local_ai_internal.vectorizer_keys(v, 'f.%1$s %3$s o.%2$I', ' and '));
    else
        on_delete := pg_catalog.format(
            'delete from %s f using old_rows o where %s; delete from %s c using old_rows o where %s;',
            f, azure_local_ai_internal.vectorizer_keys(v, 'f.%1$s %3$s o.%2$I', ' and '),
            v.chunks_table, azure_local_ai_internal.vectorizer_keys(v, 'c.%5$I %3$s o.%2$I', ' and '));
    end if;
    -- The generated body: static SQL (planned once per session), writes that never wait: a key
    -- is queued unless an entry for it exists that no worker holds; the probe's KEY SHARE lock
    -- keeps workers off that entry until this transaction ends, so they see this change. The
    -- pending count is kept in the same statement (the queue's own count trigger skips rows
    -- queued from a trigger). It runs on every write to the source, so it has no SET clause
    -- (that costs a few microseconds a call): every operator, cast, function and relation
    -- in it is schema-qualified, and the transition tables are found before any schema.
    body := pg_catalog.format($body$
begin
    if tg_op operator(pg_catalog.=) 'INSERT' then
        with queued as (
            insert into %1$s (%2$s)
            select %3$s from new_rows n
            where %4$s and not exists (%5$s)
            returning 1)
        insert into azure_local_ai_internal.vectorizer_queue_count (vectorizer_id, delta)
        select %14$s, pg_catalog.count(*) from queued
        having pg_catalog.count(*) operator(pg_catalog.>) 0;
    elsif tg_op operator(pg_catalog.=) 'UPDATE' then
        with queued as (
            insert into %1$s (%2$s)
            select %3$s from new_rows n left join old_rows o on %6$s
            where ((o.%7$I is null and %4$s)
                   or (n.%8$I)::pg_catalog.text collate pg_catalog."C" operator(pg_catalog.<>)
                      (o.%8$I)::pg_catalog.text collate pg_catalog."C"
                   or (n.%8$I is null) operator(pg_catalog.<>) (o.%8$I is null))
              and not exists (%5$s)
            union all
            select %10$s from old_rows o
            where not exists (select from new_rows n where %6$s) and not exists (%11$s)
            returning 1)
        insert into azure_local_ai_internal.vectorizer_queue_count (vectorizer_id, delta)
        select %14$s, pg_catalog.count(*) from queued
        having pg_catalog.count(*) operator(pg_catalog.>) 0;
    elsif tg_op operator(pg_catalog.=) 'DELETE' then
        %12$s
        return null;
    else
        truncate %13$s;
        return null;
    end if;
    if found then
        perform pg_catalog.pg_notify('azure_local_ai_vectorizer', '%14$s');
    end if;
    return null;
exception when others then
    -- a write to the source never fails because of the vectorizer: stop it and say why
    perform azure_local_ai_internal.vectorizer_disable(%14$s,
        pg_catalog.format('enqueueing failed (%%s: %%s)', sqlstate, sqlerrm));
    return null;
end
$body$,
        q, cols,
        azure_local_ai_internal.vectorizer_keys(v, 'n.%2$I'),
        azure_local_ai_internal.vectorizer_enqueue_filter(v, 'n'),
        pg_catalog.format(probe, q, azure_local_ai_internal.vectorizer_keys(v, 'q.%1$s %3$s n.%2$I', ' and ')),
        azure_local_ai_internal.vectorizer_keys(v, 'o.%2$I %3$s n.%2$I', ' and '),
        first_key, v.input_column, null,
        azure_local_ai_internal.vectorizer_keys(v, 'o.%2$I'),
        pg_catalog.format(probe, q, azure_local_ai_internal.vectorizer_keys(v, 'q.%1$s %3$s o.%2$I', ' and ')),
        on_delete,
        case when v.chunks_table is null then f else f || ', ' || v.chunks_table::text end,
        v.id);
    execute pg_catalog.format(
        'create or replace function %s() returns trigger as %L language plpgsql volatile '
        'security definer', fn, body);
    execute pg_catalog.format('revoke all on function %s() from public', fn);
    execute pg_catalog.format('comment on function %s() is %L', fn,
        pg_catalog.format('internal: queues the rows of %s that vectorizer %s must embed (generated)',
                          v.source, v.id));
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_build_enqueue(azure_local_ai.vectorizer) is
'internal: (re)generates the trigger function that queues changed rows of a vectorizer''s source';

create or replace function azure_local_ai_internal.vectorizer_source_triggers
( v azure_local_ai.vectorizer
, present boolean
) returns void
as $func$
declare
    fn text := azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue');
    name text := 'azure_local_ai_vectorizer_' || v.id;
    old_trigger name;
begin
    if not exists (select from pg_catalog.pg_class c where c.oid = v.source) then
        return;
    end if;
    for old_trigger in select t.tgname from pg_catalog.pg_trigger t
                       where t.tgrelid = v.source and t.tgname like name || '\_%' loop
        execute pg_catalog.format('drop trigger %I on %s', old_trigger, v.source);
    end loop;
    if present then
        execute pg_catalog.format('create trigger %I after insert on %s referencing new table as '
            'new_rows for each statement execute function %s()', name || '_insert', v.source, fn);
        execute pg_catalog.format('create trigger %I after update on %s referencing old table as '
            'old_rows new table as new_rows for each statement execute function %s()',
            name || '_update', v.source, fn);
        execute pg_catalog.format('create trigger %I after delete on %s referencing old table as '
            'old_rows for each statement execute function %s()', name || '_delete', v.source, fn);
        execute pg_catalog.format('create trigger %I after truncate on %s '
            'for each statement execute function %s()', name || '_truncate', v.source, fn);
    end if;
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_source_triggers(azure_local_ai.vectorizer, boolean) is
'internal: creates (present) or drops the statement triggers that feed a vectorizer''s queue';

create or replace function azure_local_ai_internal.vectorizer_enqueue_all(v azure_local_ai.vectorizer)
returns bigint
as $func$
declare
    q text := azure_local_ai_internal.vectorizer_relation(v.id, 'queue');
    n bigint;
begin
    execute pg_catalog.format(
        'insert into %s (%s) select %s from %s n where %s and not exists '
        '(select from %s q where %s for key share skip locked)',
        q, azure_local_ai_internal.vectorizer_keys(v, '%1$s'),
        azure_local_ai_internal.vectorizer_keys(v, 'n.%2$I'), v.source,
        azure_local_ai_internal.vectorizer_enqueue_filter(v, 'n'),
        q, azure_local_ai_internal.vectorizer_keys(v, 'q.%1$s %3$s n.%2$I', ' and '));
    get diagnostics n = row_count;
    if n > 0 and pg_catalog.pg_trigger_depth() > 0 then
        -- from a trigger (create, alter): the queue's count trigger leaves it to us
        insert into azure_local_ai_internal.vectorizer_queue_count (vectorizer_id, delta)
        values (v.id, n);
    end if;
    perform pg_catalog.pg_notify('azure_local_ai_vectorizer', v.id::text);
    return n;
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_enqueue_all(azure_local_ai.vectorizer) is
'internal: queues every row of the source (backfill, and after alter_vectorizer)';

create or replace function azure_local_ai_internal.vectorizer_grant(v azure_local_ai.vectorizer)
returns void
as $func$
declare
    owner text := (select c.relowner::regrole::text from pg_catalog.pg_class c
                   where c.oid = v.source);
begin
    if owner is not null then
        execute pg_catalog.format('grant select, insert, update, delete on %s, %s to %s '
            'with grant option', azure_local_ai_internal.vectorizer_relation(v.id, 'queue'),
            azure_local_ai_internal.vectorizer_relation(v.id, 'failures'), owner);
    end if;
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_grant(azure_local_ai.vectorizer) is
'internal: gives the source''s owner every privilege on the queue and failures (with grant option)';

create or replace function azure_local_ai_internal.vectorizer_build(v azure_local_ai.vectorizer)
returns void
as $func$
declare
    q text := azure_local_ai_internal.vectorizer_relation(v.id, 'queue');
    f text := azure_local_ai_internal.vectorizer_relation(v.id, 'failures');
    defs text := azure_local_ai_internal.vectorizer_keys(v, '%1$s %4$s not null');
    cols text := azure_local_ai_internal.vectorizer_keys(v, '%1$s');
    fn text := 'azure_local_ai_internal.vectorizer_queue_counted';
begin
    -- key columns keep the source's types and collations (k1..kn: the source's names may change)
    select pg_catalog.string_agg(pg_catalog.format('k%s %s%s not null', e.pos, e.k ->> 'type',
               coalesce(' collate ' || (e.k ->> 'collation'), '')), ', ' order by e.pos)
    into defs from pg_catalog.jsonb_array_elements(v.key_columns) with ordinality as e(k, pos);
    execute pg_catalog.format('create table %s (seq bigint generated always as identity primary '
        'key, %s, queued_at timestamptz not null default pg_catalog.now())', q, defs);
    execute pg_catalog.format('create index on %s (%s)', q, cols);
    execute pg_catalog.format('create table %s (%s, error text not null, attempts integer not null, '
        'first_failed_at timestamptz not null, last_attempt_at timestamptz not null, '
        'retry_at timestamptz, primary key (%s))', f, defs, cols);
    execute pg_catalog.format('comment on table %s is %L', q, pg_catalog.format(
        'rows of %s that vectorizer %s has to embed (k1..: %s)', v.source, v.id,
        azure_local_ai_internal.vectorizer_keys(v, '%2$s')));
    execute pg_catalog.format('comment on table %s is %L', f, pg_catalog.format(
        'rows of %s that vectorizer %s could not embed, and when it tries again', v.source, v.id));
    perform azure_local_ai_internal.vectorizer_grant(v);
    -- rows queued from a trigger (the enqueue function, create, alter) are counted where they
    -- are queued; this one counts the rest (retries, by the worker or retry_vectorizer_failures)
    execute pg_catalog.format('create trigger counted_insert after insert on %s referencing new '
        'table as new_rows for each statement when (pg_catalog.pg_trigger_depth() < 1) '
        'execute function %s(%L)', q, fn, v.id);
    execute pg_catalog.format('create trigger counted_delete after delete on %s referencing old '
        'table as old_rows for each statement execute function %s(%L)', q, fn, v.id);
    execute pg_catalog.format('create trigger counted_truncate after truncate on %s '
        'for each statement execute function %s(%L)', q, fn, v.id);
    perform azure_local_ai_internal.vectorizer_build_enqueue(v);
    perform azure_local_ai_internal.vectorizer_source_triggers(v, true);
    perform azure_local_ai_internal.vectorizer_enqueue_all(v);
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_build(azure_local_ai.vectorizer) is
'internal: creates the queue, failures table, triggers of a new vectorizer and queues every row';

create or replace function azure_local_ai_internal.vectorizer_teardown(v azure_local_ai.vectorizer)
returns void
as $func$
begin
    perform azure_local_ai_internal.vectorizer_source_triggers(v, false);
    execute pg_catalog.format('drop function if exists %s()',
        azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue'));
    execute pg_catalog.format('drop table if exists %s, %s',
        azure_local_ai_internal.vectorizer_relation(v.id, 'queue'),
        azure_local_ai_internal.vectorizer_relation(v.id, 'failures'));
    delete from azure_local_ai_internal.vectorizer_queue_count c where c.vectorizer_id = v.id;
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_teardown(azure_local_ai.vectorizer) is
'internal: removes the triggers, queue, failures and counts of a vectorizer (not its vectors)';

create or replace function azure_local_ai_internal.vectorizer_disable(vid integer, reason text)
returns void
as $func$
declare
    v azure_local_ai.vectorizer;
begin
    update azure_local_ai.vectorizer x set disabled_reason = reason
    where x.id = vid and x.disabled_reason is null
    returning x.* into v;
    if found then
        -- without its triggers the source takes writes as if the vectorizer did not exist
        perform azure_local_ai_internal.vectorizer_source_triggers(v, false);
        raise warning 'vectorizer % is disabled: %', vid, reason
            using hint = 'see azure_local_ai.vectorizer_status; drop it with '
                         'azure_local_ai.drop_vectorizer and create it again';
    end if;
end
$func$
language plpgsql volatile security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_disable(integer, text) is
'internal: stops a vectorizer (drops its triggers) and records why';

revoke all on function azure_local_ai_internal.vectorizer_disable(integer, text) from public;

create or replace function azure_local_ai_internal.vectorizer_reconcile(vid integer)
returns void
as $func$
declare
    v azure_local_ai.vectorizer;
    was azure_local_ai.vectorizer;
    col record;
    pk jsonb;
    queue_types text;
begin
    select * into v from azure_local_ai.vectorizer x where x.id = vid for update;
    if not found or v.disabled_reason is not null
       or not exists (select from pg_catalog.pg_class c where c.oid = v.source) then
        return;
    end if;
    was := v;
    select * into col from azure_local_ai_internal.vectorizer_column(v.source, v.input_column,
        v.input_attnum);
    v.input_column := col.column_name;
    v.input_attnum := col.column_attnum;
    if v.target_column is not null then
        select * into col from azure_local_ai_internal.vectorizer_column(v.source, v.target_column,
            v.target_attnum);
        v.target_column := col.column_name;
        v.target_attnum := col.column_attnum;
    end if;
    pk := azure_local_ai_internal.vectorizer_primary_key(v.source);
    if pk is null then
        return;  -- a restore adds the key later; a dropped key is handled by the sql_drop trigger
    end if;
    select pg_catalog.string_agg(pg_catalog.format_type(a.atttypid, a.atttypmod), ',' order by a.attnum)
    into queue_types from pg_catalog.pg_attribute a
    where a.attrelid = pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(v.id, 'queue'))
      and a.attname ~ '^k[0-9]+$' and not a.attisdropped;
    if queue_types is distinct from
       (select pg_catalog.string_agg(e.k ->> 'type', ',' order by e.pos)
        from pg_catalog.jsonb_array_elements(pk) with ordinality as e(k, pos)) then
        perform azure_local_ai_internal.vectorizer_disable(vid,
            pg_catalog.format('the primary key of table %s changed', v.source));
        return;
    end if;
    v.key_columns := pk;
    if v.chunks_table is not null then
        v.chunk_key_columns := array(
            select e.k ->> 'name'
            from pg_catalog.jsonb_array_elements(
                azure_local_ai_internal.vectorizer_primary_key(v.chunks_table))
                with ordinality as e(k, pos)
            where e.pos <= pg_catalog.jsonb_array_length(pk) order by e.pos);
    end if;
    if v is distinct from was then
        update azure_local_ai.vectorizer x
        set input_column = v.input_column, input_attnum = v.input_attnum,
            target_column = v.target_column, target_attnum = v.target_attnum,
            key_columns = v.key_columns, chunk_key_columns = v.chunk_key_columns
        where x.id = vid;
    end if;
    perform azure_local_ai_internal.vectorizer_grant(v);
    perform azure_local_ai_internal.vectorizer_build_enqueue(v);
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_reconcile(integer) is
'internal: after ALTER TABLE, follows renames, re-grants to the owner, regenerates the trigger';

do $do$
declare
    fn text;
begin
    -- only the extension's triggers call these (as the extension's owner)
    foreach fn in array array[
        'vectorizer_build_enqueue(azure_local_ai.vectorizer)',
        'vectorizer_source_triggers(azure_local_ai.vectorizer, boolean)',
        'vectorizer_enqueue_all(azure_local_ai.vectorizer)',
        'vectorizer_grant(azure_local_ai.vectorizer)',
        'vectorizer_build(azure_local_ai.vectorizer)',
        'vectorizer_teardown(azure_local_ai.vectorizer)',
        'vectorizer_reconcile(integer)',
        'vectorizer_primary_key(regclass)',
        'vectorizer_column(regclass, name, smallint)',
        'vectorizer_type(regclass, name)',
        'vectorizer_resolve(azure_local_ai.vectorizer)',
        'vectorizer_relation(integer, text)',
        'vectorizer_keys(azure_local_ai.vectorizer, text, text)',
        'vectorizer_enqueue_filter(azure_local_ai.vectorizer, text)']
    loop
        execute pg_catalog.format('revoke all on function azure_local_ai_internal.%s from public', fn);
    end loop;
end
$do$;

-------------------------------------------------------------------------------------------------
-- internal: triggers of the catalog and of the queues, event triggers

create or replace function azure_local_ai_internal.vectorizer_catalog_check() returns trigger
as $func$
begin
    if tg_op = 'INSERT' then
        if pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(new.id, 'queue'))
           is not null then
            -- pg_restore: the dump holds the queue, the triggers and the rest; take the row as is
            return new;
        end if;
        return azure_local_ai_internal.vectorizer_resolve(new);
    end if;
    -- UPDATE. Callers may change only the settings (column privileges); the extension's own
    -- code changes names, attnums and the disabled reason, which need no check.
    if (new.model_uri, new.prefix, new.chunk_tokens, new.overlap_tokens, new.dimensions)
       is distinct from
       (old.model_uri, old.prefix, old.chunk_tokens, old.overlap_tokens, old.dimensions) then
        if old.disabled_reason is not null then
            raise exception 'vectorizer % is disabled', old.id
                using errcode = 'object_not_in_prerequisite_state', detail = old.disabled_reason,
                hint = 'drop it with azure_local_ai.drop_vectorizer and create it again';
        end if;
        new := azure_local_ai_internal.vectorizer_resolve(new);
        new.generation := old.generation + 1;
    end if;
    return new;
end
$func$
language plpgsql volatile security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_catalog_check() is
'internal: checks a new or changed vectorizer row (BEFORE trigger of the catalog; it only reads '
'the system catalogs, row-level security has checked the caller)';

create trigger vectorizer_check before insert or update on azure_local_ai.vectorizer
for each row execute function azure_local_ai_internal.vectorizer_catalog_check();

create or replace function azure_local_ai_internal.vectorizer_catalog_apply() returns trigger
as $func$
begin
    if tg_op = 'INSERT' then
        if pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(new.id, 'queue'))
           is null then
            perform azure_local_ai_internal.vectorizer_build(new);
        end if;
    elsif tg_op = 'UPDATE' then
        if new.generation > old.generation then
            -- every row again; until its new vector is written the old one stays
            perform azure_local_ai_internal.vectorizer_enqueue_all(new);
        end if;
    else
        perform azure_local_ai_internal.vectorizer_teardown(old);
    end if;
    return null;
end
$func$
language plpgsql volatile security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_catalog_apply() is
'internal: builds, re-queues or removes what a catalog row describes (runs as the extension owner)';

create trigger vectorizer_apply after insert or update or delete on azure_local_ai.vectorizer
for each row execute function azure_local_ai_internal.vectorizer_catalog_apply();

create or replace function azure_local_ai_internal.vectorizer_compact_count(vid integer)
returns void
as $func$
    -- fold the deltas older than the rate window into one row; rows another transaction holds
    -- are left for the next time, so this never waits
    with stale_rows as (
        select c.ctid from azure_local_ai_internal.vectorizer_queue_count c
        where c.vectorizer_id = vid
          and c.at < pg_catalog.clock_timestamp() - interval '5 minutes'
        for update skip locked
    ), gone as (
        delete from azure_local_ai_internal.vectorizer_queue_count c using stale_rows
        where c.ctid = stale_rows.ctid returning c.delta
    )
    insert into azure_local_ai_internal.vectorizer_queue_count (vectorizer_id, delta, at)
    select vid, pg_catalog.sum(gone.delta), pg_catalog.clock_timestamp() - interval '5 minutes'
    from gone having pg_catalog.count(*) > 0
$func$
language sql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_compact_count(integer) is
'internal: folds the old pending-count deltas of a vectorizer into one row';

revoke all on function azure_local_ai_internal.vectorizer_compact_count(integer) from public;

create or replace function azure_local_ai_internal.vectorizer_queue_counted() returns trigger
as $func$
declare
    vid integer := tg_argv[0]::integer;
    n bigint;
begin
    if tg_op = 'INSERT' then
        select pg_catalog.count(*) into n from new_rows;
    elsif tg_op = 'DELETE' then
        select -pg_catalog.count(*) into n from old_rows;
    else
        delete from azure_local_ai_internal.vectorizer_queue_count c where c.vectorizer_id = vid;
        return null;
    end if;
    if n <> 0 then
        insert into azure_local_ai_internal.vectorizer_queue_count (vectorizer_id, delta)
        values (vid, n);
    end if;
    if n < 0 and pg_catalog.random() < 0.05 then
        perform azure_local_ai_internal.vectorizer_compact_count(vid);
    end if;
    return null;
end
$func$
language plpgsql volatile security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_queue_counted() is
'internal: keeps the pending count of a queue exact (statement triggers of each queue)';

create or replace function azure_local_ai_internal.vectorizer_ddl_end() returns event_trigger
as $func$
declare
    r record;
begin
    for r in
        select distinct v.id
        from pg_catalog.pg_event_trigger_ddl_commands() c
        join azure_local_ai.vectorizer v on c.classid = 'pg_catalog.pg_class'::regclass
            and (c.objid = v.source or c.objid = v.chunks_table)
        order by v.id
    loop
        begin
            perform azure_local_ai_internal.vectorizer_reconcile(r.id);
        exception when others then
            -- never let the vectorizer break someone's ALTER TABLE
            raise warning 'vectorizer %: could not follow ALTER TABLE: %', r.id, sqlerrm;
        end;
    end loop;
end
$func$
language plpgsql volatile security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_ddl_end() is
'internal: after ALTER TABLE on a source or chunks table, follows it (event trigger)';

create or replace function azure_local_ai_internal.vectorizer_sql_drop() returns event_trigger
as $func$
declare
    o record;
    v record;
begin
    for o in select * from pg_catalog.pg_event_trigger_dropped_objects() loop
        if o.object_type in ('table', 'partitioned table') then
            for v in select x.id from azure_local_ai.vectorizer x where x.source = o.objid loop
                delete from azure_local_ai.vectorizer x where x.id = v.id;
                raise notice 'vectorizer % was removed with its table %', v.id, o.object_identity
                    using detail = 'its queue and failures are gone; a chunks table stays';
            end loop;
            for v in select x.id from azure_local_ai.vectorizer x
                     where x.chunks_table = o.objid
                        or (o.schema_name = 'azure_local_ai'
                            and o.object_name in ('vectorizer_' || x.id || '_queue',
                                                  'vectorizer_' || x.id || '_failures'))
            loop
                perform azure_local_ai_internal.vectorizer_disable(v.id,
                    pg_catalog.format('table %s was dropped', o.object_identity));
            end loop;
        elsif o.object_type = 'table column' then
            for v in select x.id from azure_local_ai.vectorizer x
                     where (x.source = o.objid and o.objsubid in (x.input_attnum, x.target_attnum))
                        or (x.chunks_table = o.objid
                            and o.address_names[3] in ('chunk_seq', 'chunk', 'embedding'))
            loop
                perform azure_local_ai_internal.vectorizer_disable(v.id,
                    pg_catalog.format('column %s was dropped', o.object_identity));
            end loop;
        end if;
    end loop;
    for v in select x.id, x.source from azure_local_ai.vectorizer x
             where x.disabled_reason is null
               and exists (select from pg_catalog.pg_class c where c.oid = x.source)
               and not exists (select from pg_catalog.pg_index i
                               where i.indrelid = x.source and i.indisprimary)
    loop
        perform azure_local_ai_internal.vectorizer_disable(v.id,
            pg_catalog.format('table %s has no primary key any more', v.source));
    end loop;
exception when others then
    raise warning 'vectorizer: could not follow a DROP: %', sqlerrm;
end
$func$
language plpgsql volatile security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_sql_drop() is
'internal: removes the vectorizers of a dropped table, disables those that lost a column (event trigger)';

create event trigger azure_local_ai_vectorizer_ddl on ddl_command_end
    when tag in ('ALTER TABLE')
    execute function azure_local_ai_internal.vectorizer_ddl_end();

create event trigger azure_local_ai_vectorizer_drop on sql_drop
    execute function azure_local_ai_internal.vectorizer_sql_drop();

-------------------------------------------------------------------------------------------------
-- internal: progress (for the views; they call these as the viewer, for the rows it may see)

create or replace function azure_local_ai_internal.vectorizer_worker_alive
( w azure_local_ai.vectorizer_worker
) returns boolean
as $func$
    select w.heartbeat_at > pg_catalog.now() - interval '1 minute'
       and exists (select from pg_catalog.pg_stat_activity a
                   where a.pid = w.backend_pid
                     and a.backend_start is not distinct from coalesce(w.backend_start, a.backend_start))
$func$
language sql stable parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_worker_alive(azure_local_ai.vectorizer_worker) is
'internal: whether a registered worker is alive (recent heartbeat and its session still open)';

create or replace function azure_local_ai_internal.vectorizer_progress
( vid integer
, out pending bigint
, out failed bigint
, out oldest_pending timestamptz
, out rows_per_second double precision
, out last_error text
, out last_error_at timestamptz
, out workers integer
)
as $func$
declare
    q regclass := pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(vid, 'queue'));
    f regclass := pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(vid, 'failures'));
    werror text;
    werror_at timestamptz;
begin
    select coalesce(pg_catalog.sum(c.delta), 0)::bigint,
           coalesce(-pg_catalog.sum(c.delta) filter (
               where c.delta < 0 and c.at > pg_catalog.clock_timestamp() - interval '1 minute'),
               0)::double precision / 60.0
    into pending, rows_per_second
    from azure_local_ai_internal.vectorizer_queue_count c where c.vectorizer_id = vid;
    failed := 0;
    if q is not null then
        execute pg_catalog.format('select queued_at from %s order by seq limit 1', q)
            into oldest_pending;
    end if;
    if f is not null then
        execute pg_catalog.format('select count(*) from %s', f) into failed;
        execute pg_catalog.format('select error, last_attempt_at from %s '
            'order by last_attempt_at desc limit 1', f) into last_error, last_error_at;
    end if;
    -- a worker's error about this vectorizer (from a role that can read its table: a worker
    -- lacking privileges on the queue says so here), or about the runtime (from a worker
    -- that serves this vectorizer)
    select w.last_error, w.last_error_at into werror, werror_at
    from azure_local_ai.vectorizer_worker w
    where w.last_error is not null
      and azure_local_ai_internal.vectorizer_worker_alive(w)
      and ((w.last_error_vectorizer = vid
            and pg_catalog.has_any_column_privilege(w.worker_role::oid,
                (select x.source::oid from azure_local_ai.vectorizer x where x.id = vid), 'SELECT'))
           or (w.last_error_vectorizer is null
               and (w.vectorizers is null or vid = any(w.vectorizers))
               and q is not null
               and pg_catalog.has_table_privilege(w.worker_role::oid, q::oid, 'DELETE')))
    order by w.last_error_at desc limit 1;
    if werror_at > coalesce(last_error_at, '-infinity') then
        last_error := werror;
        last_error_at := werror_at;
    end if;
    select pg_catalog.count(*)::integer into workers
    from azure_local_ai.vectorizer_worker w
    where azure_local_ai_internal.vectorizer_worker_alive(w)
      and (w.vectorizers is null or vid = any(w.vectorizers))
      and q is not null and pg_catalog.has_table_privilege(w.worker_role::oid, q::oid, 'DELETE');
end
$func$
language plpgsql stable security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_progress(integer) is
'internal: pending, failed, oldest pending, recent rate, last error and live workers of a vectorizer';

create or replace function azure_local_ai_internal.vectorizer_failure_rows(vid integer)
returns table
( row_key jsonb
, error text
, attempts integer
, first_failed_at timestamptz
, last_attempt_at timestamptz
, retry_at timestamptz
)
as $func$
declare
    v azure_local_ai.vectorizer;
    f regclass := pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(vid, 'failures'));
begin
    select * into v from azure_local_ai.vectorizer x where x.id = vid;
    if f is null or not found then
        return;
    end if;
    return query execute pg_catalog.format(
        'select pg_catalog.jsonb_build_object(%s), f.error, f.attempts, f.first_failed_at, '
        'f.last_attempt_at, f.retry_at from %s f order by f.last_attempt_at desc',
        azure_local_ai_internal.vectorizer_keys(v, '%2$L, f.%1$s'), f);
end
$func$
language plpgsql stable security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_failure_rows(integer) is
'internal: the failed rows of a vectorizer, their key as JSON';

-------------------------------------------------------------------------------------------------
-- the public interface

create or replace function azure_local_ai.chunk_text
( model_uri text
, input text
, max_tokens integer default 512
, overlap_tokens integer default 0
) returns table (seq integer, chunk text)
as $func$
    select c.ord::integer, c.chunk
    from pg_catalog.jsonb_array_elements_text(
             coalesce(azure_local_ai_internal.request('chunk_text',
                          pg_catalog.jsonb_build_object('model', model_uri, 'input', input,
                              'max_tokens', max_tokens, 'overlap_tokens', overlap_tokens),
                          600000),
                      azure_local_ai_internal.raise_pending(null::jsonb)))
         with ordinality as c(chunk, ord)
$func$
language sql immutable strict parallel safe security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.chunk_text(text, text, integer, integer) is
'input in chunks that fit max_tokens of the model''s tokenizer (special tokens included), cut at '
'paragraphs, then sentences, then words, with about overlap_tokens of overlap';

create or replace function azure_local_ai.create_vectorizer
( source regclass
, input_column name
, target_column name default null
, model_uri text default 'multilingual-e5-small:v1'
, prefix text default ''
, chunks_table name default null
, chunk_tokens integer default null
, overlap_tokens integer default 0
) returns integer
as $func$
declare
    owner_oid oid;
    schema_name name;
    meta jsonb;
    dims integer;
    max_tokens integer;
    key_defs text;
    key_names text;
    vector_type oid;
    made regclass;
    vid integer;
begin
    if source is null or input_column is null or model_uri is null or prefix is null then
        raise exception 'source, input_column, model_uri and prefix must not be null'
            using errcode = 'null_value_not_allowed';
    end if;
    select c.relowner, n.nspname into owner_oid, schema_name
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = source;
    if not pg_catalog.pg_has_role(current_user, owner_oid, 'USAGE') then
        raise exception 'must be owner of table %', source
            using errcode = 'insufficient_privilege',
            detail = pg_catalog.format('table %s belongs to role %s; the current role is %I',
                                       source, owner_oid::regrole, current_user),
            hint = 'a vectorizer is created by the owner of its table, a member of the owning '
                   'role or a superuser';
    end if;
    if (target_column is null) = (chunks_table is null) then
        raise exception 'a vectorizer needs exactly one destination'
            using errcode = 'invalid_parameter_value',
            detail = case when target_column is null
                          then 'neither target_column nor chunks_table was given'
                          else 'both target_column and chunks_table were given' end,
            hint = 'pass target_column => ''embedding'' (an existing vector or real[] column) or '
                   'chunks_table => ''docs_chunks'' (a table the call creates)';
    end if;
    meta := azure_local_ai.model_metadata(model_uri);
    dims := (meta ->> 'dimensions')::integer;
    max_tokens := (meta ->> 'max_tokens')::integer;
    if chunks_table is not null then
        chunk_tokens := coalesce(chunk_tokens, max_tokens);
        if chunk_tokens > max_tokens then
            raise exception 'chunk_tokens is %, model % reads at most % tokens', chunk_tokens,
                model_uri, max_tokens using errcode = 'invalid_parameter_value';
        end if;
        select t.oid into vector_type from pg_catalog.pg_type t
        join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_type'::regclass
            and d.objid = t.oid and d.deptype = 'e'
        join pg_catalog.pg_extension e on e.oid = d.refobjid and e.extname = 'vector'
        where t.typname = 'vector';
        if vector_type is null then
            raise exception 'type vector does not exist' using errcode = 'undefined_object',
                hint = 'a chunks table stores pgvector vectors: CREATE EXTENSION vector';
        end if;
        select pg_catalog.string_agg(pg_catalog.format('%I %s not null', a.attname,
                   pg_catalog.format_type(a.atttypid, a.atttypmod)), ', ' order by k.pos),
               pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' order by k.pos)
        into key_defs, key_names
        from pg_catalog.pg_index i
        cross join lateral pg_catalog.unnest(i.indkey::int2[]) with ordinality as k(attnum, pos)
        join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
        where i.indrelid = source and i.indisprimary and k.pos <= i.indnkeyatts;
        if key_defs is null then
            raise exception 'table % has no primary key', source
                using errcode = 'object_not_in_prerequisite_state',
                hint = pg_catalog.format('add one: ALTER TABLE %s ADD PRIMARY KEY (...)', source);
        end if;
        execute pg_catalog.format('create table %I.%I (%s, chunk_seq integer not null, '
            'chunk text not null, embedding %s not null, primary key (%s, chunk_seq))',
            schema_name, chunks_table, key_defs, pg_catalog.format_type(vector_type, dims),
            key_names);
        made := pg_catalog.format('%I.%I', schema_name, chunks_table)::regclass;
        execute pg_catalog.format('comment on table %s is %L', made, pg_catalog.format(
            'chunks of %s.%I and their embeddings, kept by azure_local_ai (join back on %s)',
            source, input_column, key_names));
    end if;
    insert into azure_local_ai.vectorizer (source, input_column, target_column, chunks_table,
        model_uri, prefix, chunk_tokens, overlap_tokens, dimensions)
    values (source, input_column, target_column, made, model_uri, prefix,
        chunk_tokens, coalesce(overlap_tokens, 0), dims)
    returning id into vid;
    return vid;
end
$func$
language plpgsql volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.create_vectorizer(regclass, name, name, text, text, name, integer, integer) is
'keeps embeddings of input_column in target_column (or in a new chunks_table) current; returns its id';

-- The public functions run as the caller and name nothing in azure_local_ai_internal (the caller
-- may not use that schema): what they need of it is inlined.

create or replace function azure_local_ai.alter_vectorizer
( id integer
, model_uri text default null
, prefix text default null
, chunk_tokens integer default null
, overlap_tokens integer default null
) returns void
as $func$
declare
    v azure_local_ai.vectorizer;
    dims integer;
begin
    select * into v from azure_local_ai.vectorizer x where x.id = alter_vectorizer.id;
    if not found then
        raise exception 'vectorizer % does not exist', id using errcode = 'undefined_object',
            hint = 'azure_local_ai.vectorizer_status lists the vectorizers you can see';
    end if;
    if not coalesce((select pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
                     from pg_catalog.pg_class c where c.oid = v.source), false) then
        raise exception 'must be owner of table %', v.source
            using errcode = 'insufficient_privilege',
            hint = pg_catalog.format('only the owner of table %s, a member of the owning role or '
                                     'a superuser may change vectorizer %s', v.source, id);
    end if;
    dims := v.dimensions;
    if v.target_column is not null and (chunk_tokens is not null or overlap_tokens is not null) then
        raise exception 'chunk_tokens and overlap_tokens apply only to a chunks_table'
            using errcode = 'invalid_parameter_value';
    end if;
    if model_uri is not null then
        dims := (azure_local_ai.model_metadata(model_uri) ->> 'dimensions')::integer;
    end if;
    update azure_local_ai.vectorizer x
    set model_uri = coalesce(alter_vectorizer.model_uri, x.model_uri),
        prefix = coalesce(alter_vectorizer.prefix, x.prefix),
        chunk_tokens = coalesce(alter_vectorizer.chunk_tokens, x.chunk_tokens),
        overlap_tokens = coalesce(alter_vectorizer.overlap_tokens, x.overlap_tokens),
        dimensions = dims
    where x.id = v.id;
end
$func$
language plpgsql volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.alter_vectorizer(integer, text, text, integer, integer) is
'changes the model, prefix or chunking of a vectorizer; rows are embedded again in the background, '
'each keeping its old vector until the new one is written';

create or replace function azure_local_ai.drop_vectorizer
( id integer
, drop_destination boolean default false
) returns void
as $func$
declare
    v azure_local_ai.vectorizer;
begin
    select * into v from azure_local_ai.vectorizer x where x.id = drop_vectorizer.id;
    if not found then
        raise exception 'vectorizer % does not exist', id using errcode = 'undefined_object',
            hint = 'azure_local_ai.vectorizer_status lists the vectorizers you can see';
    end if;
    if not coalesce((select pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')
                     from pg_catalog.pg_class c where c.oid = v.source), false) then
        raise exception 'must be owner of table %', v.source
            using errcode = 'insufficient_privilege',
            hint = pg_catalog.format('only the owner of table %s, a member of the owning role or '
                                     'a superuser may change vectorizer %s', v.source, id);
    end if;
    delete from azure_local_ai.vectorizer x where x.id = v.id;
    if drop_destination then
        if v.target_column is not null then
            if exists (select from pg_catalog.pg_attribute a where a.attrelid = v.source
                       and a.attname = v.target_column and not a.attisdropped) then
                execute pg_catalog.format('alter table %s drop column %I', v.source,
                                          v.target_column);
            end if;
        elsif exists (select from pg_catalog.pg_class c where c.oid = v.chunks_table) then
            execute pg_catalog.format('drop table %s', v.chunks_table);
        end if;
    end if;
end
$func$
language plpgsql volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.drop_vectorizer(integer, boolean) is
'removes a vectorizer''s triggers, queue and state; its vectors stay unless drop_destination';

create or replace function azure_local_ai.retry_vectorizer_failures(id integer) returns bigint
as $func$
declare
    v azure_local_ai.vectorizer;
    q text := pg_catalog.format('azure_local_ai.%I', 'vectorizer_' || id || '_queue');
    f text := pg_catalog.format('azure_local_ai.%I', 'vectorizer_' || id || '_failures');
    cols text;
    probe text;
    n bigint;
begin
    select * into v from azure_local_ai.vectorizer x where x.id = retry_vectorizer_failures.id;
    if not found then
        raise exception 'vectorizer % does not exist', id using errcode = 'undefined_object',
            hint = 'azure_local_ai.vectorizer_status lists the vectorizers you can see';
    end if;
    if v.disabled_reason is not null or pg_catalog.to_regclass(f) is null then
        raise exception 'vectorizer % is disabled', id
            using errcode = 'object_not_in_prerequisite_state', detail = v.disabled_reason,
            hint = 'drop it with azure_local_ai.drop_vectorizer and create it again';
    end if;
    if not (pg_catalog.has_table_privilege(f, 'UPDATE')
            and pg_catalog.has_table_privilege(q, 'INSERT')) then
        raise exception 'permission denied to retry the failures of vectorizer %', id
            using errcode = 'insufficient_privilege',
            hint = pg_catalog.format('the owner of table %s may, or a role it granted UPDATE on '
                                     '%s and INSERT on %s', v.source, f, q);
    end if;
    select pg_catalog.string_agg('k' || e.pos, ', ' order by e.pos),
           pg_catalog.string_agg(pg_catalog.format('q.k%1$s %2$s r.k%1$s', e.pos, e.k ->> 'eq'),
                                 ' and ' order by e.pos)
    into cols, probe
    from pg_catalog.jsonb_array_elements(v.key_columns) with ordinality as e(k, pos);
    execute pg_catalog.format(
        'with r as (update %1$s set attempts = 0, retry_at = null returning %2$s) '
        'insert into %3$s (%2$s) select %2$s from r where not exists '
        '(select from %3$s q where %4$s for key share skip locked)', f, cols, q, probe);
    get diagnostics n = row_count;
    perform pg_catalog.pg_notify('azure_local_ai_vectorizer', id::text);
    return n;
end
$func$
language plpgsql volatile parallel unsafe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai.retry_vectorizer_failures(integer) is
'queues the failed rows of a vectorizer again now (their attempts start over); returns how many';

create view azure_local_ai.vectorizer_status with (security_invoker = true) as
select v.id
     , v.source
     , v.input_column as input
     , case when v.target_column is not null
            then pg_catalog.format('%s.%I', v.source, v.target_column)
            else v.chunks_table::text end as destination
     , v.model_uri as model
     , p.pending
     , p.failed
     , greatest(interval '0', pg_catalog.clock_timestamp() - p.oldest_pending)
           as oldest_pending_age
     , p.rows_per_second
     , p.last_error
     , p.last_error_at
     , p.workers
     , v.disabled_reason
     , v.generation
from azure_local_ai.vectorizer v
cross join lateral azure_local_ai_internal.vectorizer_progress(v.id) p;

comment on view azure_local_ai.vectorizer_status is
'each vectorizer you can see: rows pending and failed, oldest pending, recent rate, last error';

grant select on azure_local_ai.vectorizer_status to public;

create view azure_local_ai.vectorizer_failures with (security_invoker = true) as
select v.id as vectorizer_id, f.row_key, f.error, f.attempts, f.first_failed_at,
       f.last_attempt_at, f.retry_at
from azure_local_ai.vectorizer v
cross join lateral azure_local_ai_internal.vectorizer_failure_rows(v.id) f;

comment on view azure_local_ai.vectorizer_failures is
'rows a vectorizer could not embed: key, error, attempts, last attempt, next retry (NULL: queued '
'again, or given up after too many attempts)';

grant select on azure_local_ai.vectorizer_failures to public;

-- Trigger and event trigger functions need no EXECUTE where they fire: nobody may call them.
revoke execute on function
    azure_local_ai_internal.vectorizer_catalog_check(),
    azure_local_ai_internal.vectorizer_catalog_apply(),
    azure_local_ai_internal.vectorizer_queue_counted(),
    azure_local_ai_internal.vectorizer_ddl_end(),
    azure_local_ai_internal.vectorizer_sql_drop()
    from public;

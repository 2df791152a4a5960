-- azure_local_ai 1.1.1 -> 1.2.0: an INSERT into a vectorizer's table costs one append.
--
-- Until 1.1.1 the enqueue trigger did the queue's whole bookkeeping in the writer's statement:
-- a probe for an unclaimed entry, the queue row with its index, a count delta, a NOTIFY and a
-- subtransaction (the exception block). A single-row INSERT ran at 0.73x the rate of the same
-- INSERT without a vectorizer (benchmarks/trigger_parts.py). An INSERT is now appended to
-- azure_local_ai.vectorizer_N_inbox (k1..kn, queued_at; no index, no seq), and the worker moves
-- the inbox into the queue, probe and count included, in its own short transaction, before it
-- claims. UPDATE, DELETE and TRUNCATE keep 1.1.1's path: they are rarer, and an UPDATE must
-- probe the queue to keep a claimed entry from swallowing a change.
--
-- What the writer no longer does for an INSERT, and who does it now:
--   * NOTIFY: workers look at the inboxes every --inbox-interval (0.2 s); a NOTIFY also takes
--     a server-wide lock at commit, which serialised concurrent writers.
--   * the exception block: an append of the row's own key to a table without index, trigger
--     or constraint fails only when the whole INSERT would (disk, memory). Dropping an inbox
--     by hand disables its vectorizer (the sql_drop event trigger below), as for the queue.
--   * the count delta: the queue's own count trigger counts what the worker moves.
--   * the function's SET enable_seqscan (2 us a call): the INSERT trigger calls a function of
--     its own, azure_local_ai_internal.vectorizer_N_append(), which probes nothing.
-- vectorizer_status counts inbox rows as pending; the oldest pending age includes them.
--
-- Workers of 1.1.x do not read inboxes: update the package (worker and extension together).
\echo Use "ALTER EXTENSION azure_local_ai UPDATE TO '1.2.0'" to load this file. \quit

create or replace function azure_local_ai_internal.vectorizer_relation(vid integer, kind text)
returns text
as $func$
    select case kind
        when 'queue' then pg_catalog.format('azure_local_ai.%I', 'vectorizer_' || vid || '_queue')
        when 'inbox' then pg_catalog.format('azure_local_ai.%I', 'vectorizer_' || vid || '_inbox')
        when 'failures' then pg_catalog.format('azure_local_ai.%I', 'vectorizer_' || vid || '_failures')
        when 'enqueue' then pg_catalog.format('azure_local_ai_internal.%I', 'vectorizer_' || vid || '_enqueue')
        when 'append' then pg_catalog.format('azure_local_ai_internal.%I', 'vectorizer_' || vid || '_append')
    end
$func$
language sql immutable strict parallel safe security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_relation(integer, text) is
'internal: the qualified name of the queue, inbox, failures table, enqueue or append function of a '
'vectorizer';

-------------------------------------------------------------------------------------------------
-- the inbox

create function azure_local_ai_internal.vectorizer_build_inbox(v azure_local_ai.vectorizer)
returns void
as $func$
declare
    i text := azure_local_ai_internal.vectorizer_relation(v.id, 'inbox');
    defs text;
begin
    if pg_catalog.to_regclass(i) is not null then
        return;  -- (not IF NOT EXISTS: in the update script it would have to be the extension's)
    end if;
    -- the queue's key columns (k1..kn: the source's types and collations), and when
    select pg_catalog.string_agg(pg_catalog.format('k%s %s%s not null', e.pos, e.k ->> 'type',
               coalesce(' collate ' || (e.k ->> 'collation'), '')), ', ' order by e.pos)
    into defs from pg_catalog.jsonb_array_elements(v.key_columns) with ordinality as e(k, pos);
    execute pg_catalog.format('create table %s (%s, queued_at timestamptz not null '
        'default pg_catalog.now())', i, defs);
    execute pg_catalog.format('comment on table %s is %L', i, pg_catalog.format(
        'rows inserted into %s that the workers of vectorizer %s move to its queue', v.source,
        v.id));
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_build_inbox(azure_local_ai.vectorizer) is
'internal: creates the inbox of a vectorizer (keys of inserted rows, before a worker queues them)';

create or replace function azure_local_ai_internal.vectorizer_grant(v azure_local_ai.vectorizer)
returns void
as $func$
declare
    owner text := (select c.relowner::regrole::text from pg_catalog.pg_class c
                   where c.oid = v.source);
    i regclass := pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(v.id, 'inbox'));
begin
    if owner is not null then
        execute pg_catalog.format('grant select, insert, update, delete on %s, %s%s to %s '
            'with grant option', azure_local_ai_internal.vectorizer_relation(v.id, 'queue'),
            azure_local_ai_internal.vectorizer_relation(v.id, 'failures'),
            coalesce(', ' || i::text, ''), owner);
    end if;
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_grant(azure_local_ai.vectorizer) is
'internal: gives the source''s owner every privilege on the queue, inbox and failures (with grant option)';

-- 1.1.0's teardown is kept and wrapped (its callers use the old name). 1.1.0's build needs no
-- change: the enqueue generator it calls makes the inbox.
alter function azure_local_ai_internal.vectorizer_teardown(azure_local_ai.vectorizer)
    rename to vectorizer_teardown_1_1_0;

create function azure_local_ai_internal.vectorizer_teardown(v azure_local_ai.vectorizer)
returns void
as $func$
begin
    perform azure_local_ai_internal.vectorizer_teardown_1_1_0(v);
    execute pg_catalog.format('drop function if exists %s()',
        azure_local_ai_internal.vectorizer_relation(v.id, 'append'));
    execute pg_catalog.format('drop table if exists %s',
        azure_local_ai_internal.vectorizer_relation(v.id, 'inbox'));
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_teardown(azure_local_ai.vectorizer) is
'internal: removes the triggers, queue, inbox, failures and counts of a vectorizer (not its vectors)';

-------------------------------------------------------------------------------------------------
-- the trigger functions: an INSERT appends to the inbox; the rest is 1.1.1's

drop function azure_local_ai_internal.vectorizer_build_enqueue(azure_local_ai.vectorizer);
drop function azure_local_ai_internal.vectorizer_build_enqueue_1_1_0(azure_local_ai.vectorizer);

create function azure_local_ai_internal.vectorizer_build_enqueue(v azure_local_ai.vectorizer)
returns void
as $func$
declare
    q text := azure_local_ai_internal.vectorizer_relation(v.id, 'queue');
    i text := azure_local_ai_internal.vectorizer_relation(v.id, 'inbox');
    f text := azure_local_ai_internal.vectorizer_relation(v.id, 'failures');
    fn text := azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue');
    append_fn text := azure_local_ai_internal.vectorizer_relation(v.id, 'append');
    cols text := azure_local_ai_internal.vectorizer_keys(v, '%1$s');
    probe text := 'select from %s q where %s for key share skip locked';
    -- the INSERT's one statement, in the append function and the enqueue function alike
    to_inbox text := pg_catalog.format('insert into %s (%s) select %s from new_rows n where %s',
        i, cols, azure_local_ai_internal.vectorizer_keys(v, 'n.%2$I'),
        azure_local_ai_internal.vectorizer_enqueue_filter(v, 'n'));
    append text;
    body text;
    first_key text := v.key_columns -> 0 ->> 'name';
    on_delete text;
begin
    -- the inbox first: a vectorizer from a 1.1.x dump has none, and the functions write to it
    perform azure_local_ai_internal.vectorizer_build_inbox(v);
    perform azure_local_ai_internal.vectorizer_grant(v);
    if v.chunks_table is null then
        on_delete := pg_catalog.format('delete from %s f using old_rows o where %s;', f,
            azure_local_ai_internal.vectorizer_keys(v, 'f.%1$s %3$s o.%2$I', ' and '));
    else
        on_delete := pg_catalog.format(
            'delete from %s f using old_rows o where %s; delete from %s c using old_rows o where %s;',
            f, azure_local_ai_internal.vectorizer_keys(v, 'f.%1$s %3$s o.%2$I', ' and '),
            v.chunks_table, azure_local_ai_internal.vectorizer_keys(v, 'c.%5$I %3$s o.%2$I', ' and '));
    end if;
    -- The generated bodies: static SQL, planned once per session. Every operator, cast,
    -- function and relation is schema-qualified, and the transition tables are found before
    -- any schema.
    -- INSERT (the append function, which has no SET clause: it probes nothing): one append to
    -- the inbox, no exception block (no subtransaction).
    append := pg_catalog.format($body$
begin
    %1$s;
    return null;
end
$body$, to_inbox);
    execute pg_catalog.format(
        'create or replace function %s() returns trigger as %L language plpgsql volatile '
        'security definer', append_fn, append);
    execute pg_catalog.format('revoke all on function %s() from public', append_fn);
    execute pg_catalog.format('comment on function %s() is %L', append_fn,
        pg_catalog.format('internal: appends the rows inserted into %s to the inbox of vectorizer '
                          '%s (generated)', v.source, v.id));
    -- The rest (the enqueue function runs with enable_seqscan off, so the UPDATE's probe uses
    -- the queue's index at any queue size; an INSERT that reaches it, from a trigger made
    -- before 1.2.0, is appended to the inbox too).
    -- UPDATE: a key is queued unless an entry for it exists that no worker holds; the probe's
    -- KEY SHARE lock keeps workers off that entry until this transaction ends, so they see
    -- this change; the pending count is kept in the same statement.
    body := pg_catalog.format($body$
begin
    if tg_op operator(pg_catalog.=) 'INSERT' then
        %15$s;
        return null;
    end if;
    begin
        if tg_op operator(pg_catalog.=) 'UPDATE' then
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
            if found then
                perform pg_catalog.pg_notify('azure_local_ai_vectorizer', '%14$s');
            end if;
        elsif tg_op operator(pg_catalog.=) 'DELETE' then
            %12$s
        else
            truncate %13$s;
        end if;
    exception when others then
        -- a write to the source never fails because of the vectorizer: stop it and say why
        perform azure_local_ai_internal.vectorizer_disable(%14$s,
            pg_catalog.format('enqueueing failed (%%s: %%s)', sqlstate, sqlerrm));
    end;
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
        v.id, to_inbox);
    execute pg_catalog.format(
        'create or replace function %s() returns trigger as %L language plpgsql volatile '
        'security definer set enable_seqscan to off', fn, body);
    execute pg_catalog.format('revoke all on function %s() from public', fn);
    execute pg_catalog.format('comment on function %s() is %L', fn,
        pg_catalog.format('internal: queues the rows of %s that vectorizer %s must embed (generated)',
                          v.source, v.id));
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_build_enqueue(azure_local_ai.vectorizer) is
'internal: (re)generates the trigger functions that send changed rows of a vectorizer''s source to '
'its inbox and queue (and its inbox, if it has none)';

create or replace function azure_local_ai_internal.vectorizer_source_triggers
( v azure_local_ai.vectorizer
, present boolean
) returns void
as $func$
declare
    fn text := azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue');
    -- without an append function (a vectorizer from a 1.1.x dump) the enqueue function appends
    append_fn text := coalesce(pg_catalog.to_regprocedure(
        azure_local_ai_internal.vectorizer_relation(v.id, 'append') || '()')::text, fn || '()');
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
            'new_rows for each statement execute function %s', name || '_insert', v.source,
            append_fn);
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
'internal: creates (present) or drops the statement triggers that feed a vectorizer''s inbox and queue';

-- create_vectorizer and alter_vectorizer queue every row through the inbox too: while
-- create_vectorizer's transaction holds the trigger lock, writes to the table wait, and an
-- append of 1,000,000 keys takes 0.4 s where queueing them took 2.4 s (probe, sequence, index)
alter function azure_local_ai_internal.vectorizer_enqueue_all(azure_local_ai.vectorizer)
    rename to vectorizer_enqueue_all_1_1_0;

create function azure_local_ai_internal.vectorizer_enqueue_all(v azure_local_ai.vectorizer)
returns bigint
as $func$
declare
    i text := azure_local_ai_internal.vectorizer_relation(v.id, 'inbox');
    n bigint;
begin
    if pg_catalog.to_regclass(i) is null then  -- a vectorizer from a 1.1.x dump
        return azure_local_ai_internal.vectorizer_enqueue_all_1_1_0(v);
    end if;
    execute pg_catalog.format('insert into %s (%s) select %s from %s n where %s', i,
        azure_local_ai_internal.vectorizer_keys(v, '%1$s'),
        azure_local_ai_internal.vectorizer_keys(v, 'n.%2$I'), v.source,
        azure_local_ai_internal.vectorizer_enqueue_filter(v, 'n'));
    get diagnostics n = row_count;
    perform pg_catalog.pg_notify('azure_local_ai_vectorizer', v.id::text);
    return n;
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_enqueue_all(azure_local_ai.vectorizer) is
'internal: sends every row of the source to the inbox (backfill, and after alter_vectorizer)';

-------------------------------------------------------------------------------------------------
-- status: inbox rows are pending too

alter function azure_local_ai_internal.vectorizer_progress(integer)
    rename to vectorizer_progress_1_1_0;

create function azure_local_ai_internal.vectorizer_progress
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
    i regclass := pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(vid, 'inbox'));
    inboxed bigint;
    first_inboxed timestamptz;
begin
    select * into pending, failed, oldest_pending, rows_per_second, last_error, last_error_at,
                  workers
    from azure_local_ai_internal.vectorizer_progress_1_1_0(vid);
    if i is not null then
        -- a sequential scan: the inbox holds what arrived since a worker last looked (0.2 s)
        execute pg_catalog.format('select count(*), min(queued_at) from %s', i)
            into inboxed, first_inboxed;
        pending := pending + inboxed;
        oldest_pending := least(oldest_pending, first_inboxed);
        -- rows wait in the inbox while only workers older than 1.2.0 (which do not read it)
        -- serve this vectorizer: say so, or nobody knows why pending grows
        if inboxed > 0 and workers > 0 and not exists (
            select from azure_local_ai.vectorizer_worker w
            where azure_local_ai_internal.vectorizer_worker_alive(w)
              and (w.vectorizers is null or vid = any(w.vectorizers))
              and pg_catalog.regexp_match(w.version, '^(\d+)\.(\d+)\.(\d+)')::integer[]
                  >= '{1,2,0}'::integer[]) then
            last_error := pg_catalog.format('%s inserted rows wait in the inbox, which the '
                'running workers (older than pglocalai 1.2.0) do not read: update them', inboxed);
            last_error_at := first_inboxed;
        end if;
    end if;
end
$func$
language plpgsql stable security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_progress(integer) is
'internal: pending (queued and inboxed), failed, oldest pending, recent rate, last error and live '
'workers of a vectorizer';

comment on function azure_local_ai_internal.vectorizer_progress_1_1_0(integer) is
'internal: the 1.1.0 progress of a vectorizer, without its inbox (vectorizer_progress wraps it)';

-- the view names its function by oid: the same view again, on the new function
create or replace view azure_local_ai.vectorizer_status with (security_invoker = true) as
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

-------------------------------------------------------------------------------------------------
-- an inbox dropped by hand disables its vectorizer (its INSERT trigger would fail every INSERT)

create function azure_local_ai_internal.vectorizer_inbox_dropped() returns event_trigger
as $func$
declare
    v record;
begin
    for v in select x.id, o.object_identity
             from pg_catalog.pg_event_trigger_dropped_objects() o
             join azure_local_ai.vectorizer x
               on o.object_type = 'table' and o.schema_name = 'azure_local_ai'
              and o.object_name = 'vectorizer_' || x.id || '_inbox'
             where x.disabled_reason is null
    loop
        perform azure_local_ai_internal.vectorizer_disable(v.id,
            pg_catalog.format('table %s was dropped', v.object_identity));
    end loop;
exception when others then
    raise warning 'vectorizer: could not follow a DROP: %', sqlerrm;
end
$func$
language plpgsql volatile security definer
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_inbox_dropped() is
'internal: disables a vectorizer whose inbox was dropped (event trigger)';

create event trigger azure_local_ai_vectorizer_inbox_drop on sql_drop
    execute function azure_local_ai_internal.vectorizer_inbox_dropped();

-- only the extension's triggers call these (as the extension's owner)
revoke all on function
    azure_local_ai_internal.vectorizer_build_inbox(azure_local_ai.vectorizer),
    azure_local_ai_internal.vectorizer_teardown(azure_local_ai.vectorizer),
    azure_local_ai_internal.vectorizer_teardown_1_1_0(azure_local_ai.vectorizer),
    azure_local_ai_internal.vectorizer_enqueue_all(azure_local_ai.vectorizer),
    azure_local_ai_internal.vectorizer_enqueue_all_1_1_0(azure_local_ai.vectorizer),
    azure_local_ai_internal.vectorizer_build_enqueue(azure_local_ai.vectorizer),
    azure_local_ai_internal.vectorizer_grant(azure_local_ai.vectorizer),
    azure_local_ai_internal.vectorizer_relation(integer, text),
    azure_local_ai_internal.vectorizer_progress_1_1_0(integer),
    azure_local_ai_internal.vectorizer_inbox_dropped()
    from public;

-------------------------------------------------------------------------------------------------
-- the vectorizers that exist already: an inbox each, and the new enqueue function. What an
-- extension script creates becomes a member of the extension (not dumped, dropped with it),
-- and it may not replace what is not one: the old function is dropped, and the new objects
-- are released from the extension, like those create_vectorizer makes.

do $do$
declare
    v azure_local_ai.vectorizer;
    fns text[];
    fn text;
begin
    for v in select * from azure_local_ai.vectorizer x
             where pg_catalog.to_regclass(azure_local_ai_internal.vectorizer_relation(x.id, 'queue'))
                   is not null
             order by x.id loop
        perform azure_local_ai_internal.vectorizer_build_inbox(v);
        execute pg_catalog.format('alter extension azure_local_ai drop table %s',
                                  azure_local_ai_internal.vectorizer_relation(v.id, 'inbox'));
        fns := array[azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue'),
                     azure_local_ai_internal.vectorizer_relation(v.id, 'append')];
        perform azure_local_ai_internal.vectorizer_source_triggers(v, false);
        foreach fn in array fns loop
            execute pg_catalog.format('drop function if exists %s()', fn);
        end loop;
        perform azure_local_ai_internal.vectorizer_build_enqueue(v);
        foreach fn in array fns loop
            execute pg_catalog.format('alter extension azure_local_ai drop function %s()', fn);
        end loop;
        if v.disabled_reason is null then
            perform azure_local_ai_internal.vectorizer_source_triggers(v, true);
        end if;
    end loop;
end
$do$;

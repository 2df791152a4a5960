-- azure_local_ai 1.1.0 -> 1.1.1: the enqueue trigger's queue probe always uses the index.
--
-- PL/pgSQL plans the probe once per session. Planned while the queue was empty or small, it
-- scanned the whole queue; while a worker could not drain the queue (runtime down) every
-- single-row INSERT into a source table then cost more and more (0.4 ms at 12,600 queued
-- rows, against 0.055 ms) until the queue's next ANALYZE. Every generated enqueue function
-- now runs with enable_seqscan off: its statements all look rows up by key, for which the
-- index is right at any size (2-3 us per statement for the SET).
--
-- 1.1.0 is released (extension/sql/FROZEN.sha256), so its generator is kept and wrapped: the
-- callers (create, alter, the ALTER TABLE follower) call the wrapper by its old name.
\echo Use "ALTER EXTENSION azure_local_ai UPDATE TO '1.1.1'" to load this file. \quit

alter function azure_local_ai_internal.vectorizer_build_enqueue(azure_local_ai.vectorizer)
    rename to vectorizer_build_enqueue_1_1_0;

comment on function azure_local_ai_internal.vectorizer_build_enqueue_1_1_0(azure_local_ai.vectorizer) is
'internal: the 1.1.0 generator of a vectorizer''s enqueue function (vectorizer_build_enqueue wraps it)';

create function azure_local_ai_internal.vectorizer_build_enqueue(v azure_local_ai.vectorizer)
returns void
as $func$
begin
    perform azure_local_ai_internal.vectorizer_build_enqueue_1_1_0(v);
    -- after every (re)generation: CREATE OR REPLACE FUNCTION resets the function's settings
    execute pg_catalog.format('alter function %s() set enable_seqscan to off',
                              azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue'));
end
$func$
language plpgsql volatile security invoker
set search_path to pg_catalog, pg_temp;

comment on function azure_local_ai_internal.vectorizer_build_enqueue(azure_local_ai.vectorizer) is
'internal: (re)generates the trigger function that queues changed rows of a vectorizer''s source';

-- only the extension's triggers call these (as the extension's owner)
revoke all on function azure_local_ai_internal.vectorizer_build_enqueue(azure_local_ai.vectorizer)
    from public;
revoke all on function azure_local_ai_internal.vectorizer_build_enqueue_1_1_0(azure_local_ai.vectorizer)
    from public;

-- the vectorizers that exist already
do $do$
declare
    fn regprocedure;
begin
    for fn in select pg_catalog.to_regprocedure(
                  azure_local_ai_internal.vectorizer_relation(v.id, 'enqueue') || '()')
              from azure_local_ai.vectorizer v loop
        if fn is not null then
            execute pg_catalog.format('alter function %s set enable_seqscan to off', fn);
        end if;
    end loop;
end
$do$;

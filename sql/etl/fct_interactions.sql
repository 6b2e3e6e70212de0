-- fct_interactions: the interactions snapshot with a leave-one-out split by time.
-- inputs : int_events_kcore, id_map_users, id_map_items
-- grain  : one row per (user_idx, item_idx)  (key test: validate_interactions)
-- split  : per user, the last event is test, the second-to-last valid, the rest train; users with fewer
--          than 3 events keep all of them in train (they cannot be evaluated). Ties in time are broken by
--          position in the raw files.

with int_events_kcore as (

    select * from int_events_kcore

),

id_map_users as (

    select * from id_map_users

),

id_map_items as (

    select * from id_map_items

),

indexed as (

    select
        id_map_users.idx as user_idx,
        id_map_items.idx as item_idx,
        int_events_kcore.event_ts,
        int_events_kcore.source_file,
        int_events_kcore.line_no
    from int_events_kcore
    inner join id_map_users
        on int_events_kcore.user_id = id_map_users.raw_id
    inner join id_map_items
        on int_events_kcore.item_id = id_map_items.raw_id

),

ordered as (

    select
        *,
        row_number() over (
            partition by user_idx
            order by event_ts desc, source_file desc, line_no desc
        ) as recency,
        count(*) over (partition by user_idx) as n_events
    from indexed

),

final as (

    select
        user_idx,
        item_idx,
        event_ts,
        case
            when n_events < 3 then 'train'
            when recency = 1 then 'test'
            when recency = 2 then 'valid'
            else 'train'
        end as split
    from ordered

)

select * from final

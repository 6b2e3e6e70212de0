-- fct_interactions_global_time: the interactions snapshot split by one global time cut.
-- inputs : int_events_kcore, id_map_users, id_map_items
-- params : :valid_cut, :test_cut (timestamps at the configured quantiles of event time)
-- grain  : one row per (user_idx, item_idx)
-- split  : events at or after :test_cut are test, at or after :valid_cut valid, the rest train.

with int_events_kcore as (

    select * from int_events_kcore

),

id_map_users as (

    select * from id_map_users

),

id_map_items as (

    select * from id_map_items

),

final as (

    select
        id_map_users.idx as user_idx,
        id_map_items.idx as item_idx,
        int_events_kcore.event_ts,
        case
            when int_events_kcore.event_ts >= :test_cut then 'test'
            when int_events_kcore.event_ts >= :valid_cut then 'valid'
            else 'train'
        end as split
    from int_events_kcore
    inner join id_map_users
        on int_events_kcore.user_id = id_map_users.raw_id
    inner join id_map_items
        on int_events_kcore.item_id = id_map_items.raw_id

)

select * from final

-- int_events_deduped: one event per (user, item), the first occurrence kept.
-- inputs : stg_events
-- grain  : one row per (user_id, item_id)
-- order  : "first" = earliest event time, then position in the raw files

with stg_events as (

    select * from stg_events

),

ranked as (

    select
        *,
        row_number() over (
            partition by user_id, item_id
            order by event_ts, source_file, line_no
        ) as occurrence
    from stg_events

),

final as (

    select user_id, item_id, event_ts, source_file, line_no
    from ranked
    where occurrence = 1

)

select * from final

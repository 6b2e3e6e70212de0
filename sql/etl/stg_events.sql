-- stg_events: valid, parsed events of the raw source that belong to the snapshot.
-- inputs : parsed_events (the loaders' valid events)
-- params : :snapshot_end (exclusive end of the logical date, UTC), :apply_threshold, :min_rating
-- grain  : one row per raw event
-- key    : (source_file, line_no, item_id)

with parsed_events as (

    select * from parsed_events

),

in_snapshot as (

    select *
    from parsed_events
    where event_ts < :snapshot_end

),

rated as (

    select *
    from in_snapshot
    where not :apply_threshold or rating >= :min_rating

),

final as (

    select
        user_id,
        item_id,
        event_ts,
        rating,
        source_file,
        line_no
    from rated

)

select * from final

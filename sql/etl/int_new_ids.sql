-- int_new_ids: stable index assignment for raw ids not yet in the ID map (append-only).
-- inputs : entity_first_seen (raw_id, first_ts) of the snapshot, id_map_current (raw_id, idx)
-- params : :next_idx (the map's size), :ds (the logical date, stored as first_seen)
-- An existing raw id keeps its index forever; new ids are numbered after the existing ones in order of
-- first appearance (then raw id), so reruns of the same date assign the same indices.

with entity_first_seen as (

    select * from entity_first_seen

),

id_map_current as (

    select * from id_map_current

),

new_ids as (

    select entity_first_seen.*
    from entity_first_seen
    left anti join id_map_current
        on entity_first_seen.raw_id = id_map_current.raw_id

),

final as (

    select
        raw_id,
        cast(:next_idx + row_number() over (order by first_ts, raw_id) - 1 as int) as idx,
        cast(:ds as date) as first_seen
    from new_ids

)

select * from final

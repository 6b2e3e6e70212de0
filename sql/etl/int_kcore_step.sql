-- int_kcore_step: one round of the iterative k-core filter.
-- inputs : kcore_input (the events left after the previous round)
-- params : :k
-- The job repeats this step until no row is removed: then every user and every item has >= k events.

with kcore_input as (

    select * from kcore_input

),

user_degree as (

    select user_id, count(*) as n_events
    from kcore_input
    group by user_id

),

item_degree as (

    select item_id, count(*) as n_events
    from kcore_input
    group by item_id

),

final as (

    select kcore_input.*
    from kcore_input
    inner join user_degree
        on kcore_input.user_id = user_degree.user_id
    inner join item_degree
        on kcore_input.item_id = item_degree.item_id
    where user_degree.n_events >= :k
        and item_degree.n_events >= :k

)

select * from final

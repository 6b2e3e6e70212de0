-- fct_user_list_churn: day-over-day churn of each user's top-K list (day :ds against the previous day).
-- inputs : recommendations
-- params : ds (date), k (int) = 20
-- grain  : one row per user with a list on :ds  (key: user_id)
-- The previous day is the latest recommendations partition before :ds (so a skipped night compares with
-- the last published one). Only ranks <= :k of both lists count.
-- output columns:
--   dt              date     the recommendations partition (= :ds)
--   previous_dt     date     the partition compared with (null when :ds is the first one)
--   user_id         string   raw user id
--   n_today         bigint   items in the user's top-K on dt
--   n_previous      bigint   items in the user's top-K on previous_dt (0 when the user had no list)
--   n_overlap       bigint   items in both lists
--   jaccard         double   n_overlap / size of the union; null when the user had no previous list
--   overlap_share   double   n_overlap / n_today: the share of today's list already shown the day before;
--                            null when the user had no previous list
--   has_previous    boolean  the user had a list on previous_dt

with recommendations as (

    select * from recommendations

),

previous_day as (

    select max(dt) as previous_dt
    from recommendations
    where dt < cast(:ds as date)

),

today as (

    select
        user_id,
        item_id
    from recommendations
    where dt = :ds
        and rank <= :k

),

previous as (

    select
        recommendations.user_id,
        recommendations.item_id
    from recommendations
    inner join previous_day
        on recommendations.dt = previous_day.previous_dt
    where recommendations.rank <= :k

),

today_sizes as (

    select
        user_id,
        count(*) as n_today
    from today
    group by user_id

),

previous_sizes as (

    select
        user_id,
        count(*) as n_previous
    from previous
    group by user_id

),

shared_items as (

    select
        today.user_id,
        count(*) as n_overlap
    from today
    inner join previous
        on today.user_id = previous.user_id
        and today.item_id = previous.item_id
    group by today.user_id

),

joined as (

    select
        today_sizes.user_id,
        today_sizes.n_today,
        coalesce(previous_sizes.n_previous, 0) as n_previous,
        coalesce(shared_items.n_overlap, 0) as n_overlap,
        previous_sizes.user_id is not null as has_previous
    from today_sizes
    left join previous_sizes
        on today_sizes.user_id = previous_sizes.user_id
    left join shared_items
        on today_sizes.user_id = shared_items.user_id

),

final as (

    select
        cast(:ds as date) as dt,
        previous_day.previous_dt,
        joined.user_id,
        joined.n_today,
        joined.n_previous,
        joined.n_overlap,
        case
            when joined.has_previous
                then joined.n_overlap / (joined.n_today + joined.n_previous - joined.n_overlap)
        end as jaccard,
        case
            when joined.has_previous then joined.n_overlap / joined.n_today
        end as overlap_share,
        joined.has_previous
    from joined
    cross join previous_day

)

select * from final
order by user_id

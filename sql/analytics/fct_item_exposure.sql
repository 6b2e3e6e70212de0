-- fct_item_exposure: how widely each recommended item was shown on day :ds.
-- inputs : recommendations, id_map_items
-- params : ds (date)
-- grain  : one row per item recommended to at least one user on :ds  (key: item_id)
-- output columns:
--   dt                 date     the recommendations partition (= :ds)
--   item_id            string   raw item id
--   n_users_exposed    bigint   users whose list holds the item
--   exposure_share     double   n_users_exposed / users with a list on :ds
--   mean_rank          double   mean rank of the item over those lists (1 = best)
--   best_rank          smallint best rank it reached
--   n_top1             bigint   lists that rank it first
--   item_first_seen    date     the day the item entered the catalog (id_maps/items)
--   is_new_item        boolean  item_first_seen = :ds (served without a retrain)

with recommendations as (

    select * from recommendations

),

id_map_items as (

    select * from id_map_items

),

day_recommendations as (

    select *
    from recommendations
    where dt = :ds

),

day_users as (

    select count(distinct user_id) as n_users
    from day_recommendations

),

per_item as (

    select
        item_id,
        count(distinct user_id) as n_users_exposed,
        avg(rank) as mean_rank,
        min(rank) as best_rank,
        count_if(rank = 1) as n_top1
    from day_recommendations
    group by item_id

),

final as (

    select
        cast(:ds as date) as dt,
        per_item.item_id,
        per_item.n_users_exposed,
        per_item.n_users_exposed / nullif(day_users.n_users, 0) as exposure_share,
        per_item.mean_rank,
        per_item.best_rank,
        per_item.n_top1,
        id_map_items.first_seen as item_first_seen,
        coalesce(id_map_items.first_seen = cast(:ds as date), false) as is_new_item
    from per_item
    cross join day_users
    left join id_map_items
        on per_item.item_id = id_map_items.raw_id

)

select * from final
order by n_users_exposed desc, item_id

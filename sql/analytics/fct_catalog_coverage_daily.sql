-- fct_catalog_coverage_daily: catalog coverage and concentration of the recommendations, per day.
-- inputs : recommendations, id_map_items
-- params : ds (date), days (int) = 7
-- grain  : one row per recommendations partition dt in the :days days ending :ds  (key: dt)
-- The catalog of a day is every item in id_maps/items first seen on or before it (items that ever
-- survived the ETL's k-core filter); coverage is the share of that catalog recommended to anyone.
-- output columns:
--   dt                        date    the recommendations partition
--   n_users                   bigint  users with a list
--   n_recommendations         bigint  (user, item) rows
--   n_items_recommended       bigint  distinct items in any list
--   catalog_size              bigint  items first seen on or before dt
--   catalog_coverage          double  n_items_recommended / catalog_size
--   top_item_exposure_share   double  share of users whose list holds the most exposed item

with recommendations as (

    select * from recommendations

),

id_map_items as (

    select * from id_map_items

),

window_recommendations as (

    select *
    from recommendations
    where dt between cast(:ds as date) - (:days - 1) and cast(:ds as date)

),

per_day as (

    select
        dt,
        count(distinct user_id) as n_users,
        count(*) as n_recommendations,
        count(distinct item_id) as n_items_recommended
    from window_recommendations
    group by dt

),

item_exposure as (

    select
        dt,
        item_id,
        count(distinct user_id) as n_users_exposed
    from window_recommendations
    group by dt, item_id

),

top_item as (

    select
        dt,
        max(n_users_exposed) as top_item_users
    from item_exposure
    group by dt

),

catalog as (

    select
        per_day.dt,
        count(id_map_items.idx) as catalog_size
    from per_day
    left join id_map_items
        on id_map_items.first_seen <= per_day.dt
    group by per_day.dt

),

final as (

    select
        per_day.dt,
        per_day.n_users,
        per_day.n_recommendations,
        per_day.n_items_recommended,
        catalog.catalog_size,
        per_day.n_items_recommended / nullif(catalog.catalog_size, 0) as catalog_coverage,
        top_item.top_item_users / nullif(per_day.n_users, 0) as top_item_exposure_share
    from per_day
    inner join catalog
        on per_day.dt = catalog.dt
    inner join top_item
        on per_day.dt = top_item.dt

)

select * from final
order by dt

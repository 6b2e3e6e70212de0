-- fct_popular_share: how much of day :ds's recommendations are the most popular training items.
-- inputs : recommendations, interactions, id_map_items
-- params : ds (date), top_n (int) = 100
-- grain  : one row for :ds  (key: dt)
-- Popularity is the number of training interactions (split = 'train') per item in the latest interactions
-- snapshot on or before :ds; ties are broken by the smaller item index, so exactly :top_n items are popular
-- (fewer when the snapshot has fewer items). A share near 1 means the model mostly repeats MostPop.
-- output columns:
--   dt                           date    the recommendations partition (= :ds)
--   snapshot_date                date    the interactions snapshot popularity comes from (null: none)
--   top_n                        int     the size of the popular set (= :top_n)
--   n_users                      bigint  users with a list on dt
--   n_recommendations            bigint  (user, item) rows on dt
--   n_popular_recommendations    bigint  rows whose item is in the popular set
--   popular_share                double  n_popular_recommendations / n_recommendations
--   n_popular_items_recommended  bigint  distinct popular items recommended to anyone

with recommendations as (

    select * from recommendations

),

interactions as (

    select * from interactions

),

id_map_items as (

    select * from id_map_items

),

latest_snapshot as (

    select max(snapshot_date) as snapshot_date
    from interactions
    where snapshot_date <= cast(:ds as date)

),

train_counts as (

    select
        interactions.item_idx,
        count(*) as n_train
    from interactions
    inner join latest_snapshot
        on interactions.snapshot_date = latest_snapshot.snapshot_date
    where interactions.split = 'train'
    group by interactions.item_idx

),

ranked as (

    select
        item_idx,
        row_number() over (order by n_train desc, item_idx asc) as popularity_rank
    from train_counts

),

popular_items as (

    select id_map_items.raw_id as item_id
    from ranked
    inner join id_map_items
        on ranked.item_idx = id_map_items.idx
    where ranked.popularity_rank <= :top_n

),

flagged as (

    select
        recommendations.user_id,
        recommendations.item_id,
        popular_items.item_id is not null as is_popular
    from recommendations
    left join popular_items
        on recommendations.item_id = popular_items.item_id
    where recommendations.dt = :ds

),

final as (

    select
        cast(:ds as date) as dt,
        latest_snapshot.snapshot_date,
        cast(:top_n as int) as top_n,
        count(distinct flagged.user_id) as n_users,
        count(flagged.item_id) as n_recommendations,
        count_if(flagged.is_popular) as n_popular_recommendations,
        count_if(flagged.is_popular) / nullif(count(flagged.item_id), 0) as popular_share,
        count(distinct case when flagged.is_popular then flagged.item_id end) as n_popular_items_recommended
    from latest_snapshot
    left join flagged
        on true
    group by latest_snapshot.snapshot_date

)

select * from final

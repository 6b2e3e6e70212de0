-- fct_user_top_k: the recommendation list one user received on day :ds, best first.
-- inputs : recommendations, id_map_items
-- params : ds (date), user_id (string), k (int) = 20
-- grain  : one row per rank of the user's list on :ds  (key: rank); no rows when the user got no list
-- output columns:
--   dt               date       the recommendations partition (= :ds)
--   user_id          string     raw user id (= :user_id)
--   rank             smallint   1 = best, up to :k
--   item_id          string     raw item id
--   score            float      the model's cosine score
--   item_first_seen  date       the day the item entered the catalog (id_maps/items)
--   model_name       string     model that produced the list
--   model_version    string     registered model version (the champion when the nightly run started)
--   generated_at     timestamp  when batch inference wrote the list (UTC)

with recommendations as (

    select * from recommendations

),

id_map_items as (

    select * from id_map_items

),

user_list as (

    select *
    from recommendations
    where dt = :ds
        and user_id = :user_id
        and rank <= :k

),

final as (

    select
        user_list.dt,
        user_list.user_id,
        user_list.rank,
        user_list.item_id,
        user_list.score,
        id_map_items.first_seen as item_first_seen,
        user_list.model_name,
        user_list.model_version,
        user_list.generated_at
    from user_list
    left join id_map_items
        on user_list.item_id = id_map_items.raw_id

)

select * from final
order by rank

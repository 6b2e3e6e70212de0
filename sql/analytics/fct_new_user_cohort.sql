-- fct_new_user_cohort: the users first seen on day :ds, and how many of them got recommendations.
-- inputs : id_map_users, interactions, recommendations
-- params : ds (date), days (int) = 7
-- grain  : one row for the cohort first seen on :ds  (key: first_seen)
-- A new user reaches the snapshot of :ds only if it survives the ETL's k-core filter; the nightly run serves
-- such users without a retrain (fold-in). n_recommended_within counts lists in the :days days from :ds on.
-- output columns:
--   first_seen                 date    the cohort's day (= :ds)
--   n_new_users                bigint  users in id_maps/users first seen on :ds
--   n_in_snapshot              bigint  of those, users in the interactions snapshot of :ds
--   n_recommended              bigint  of those, users with a list in recommendations dt = :ds
--   recommended_share          double  n_recommended / n_new_users (null for an empty cohort)
--   n_recommended_within       bigint  of those, users with a list on any dt in [:ds, :ds + :days - 1]

with id_map_users as (

    select * from id_map_users

),

interactions as (

    select * from interactions

),

recommendations as (

    select * from recommendations

),

new_users as (

    select
        raw_id as user_id,
        idx as user_idx
    from id_map_users
    where first_seen = :ds

),

in_snapshot as (

    select distinct user_idx
    from interactions
    where snapshot_date = :ds

),

recommended_same_day as (

    select distinct user_id
    from recommendations
    where dt = :ds

),

recommended_within as (

    select distinct user_id
    from recommendations
    where dt between cast(:ds as date) and cast(:ds as date) + (:days - 1)

),

final as (

    select
        cast(:ds as date) as first_seen,
        count(*) as n_new_users,
        count(in_snapshot.user_idx) as n_in_snapshot,
        count(recommended_same_day.user_id) as n_recommended,
        count(recommended_same_day.user_id) / nullif(count(*), 0) as recommended_share,
        count(recommended_within.user_id) as n_recommended_within
    from new_users
    left join in_snapshot
        on new_users.user_idx = in_snapshot.user_idx
    left join recommended_same_day
        on new_users.user_id = recommended_same_day.user_id
    left join recommended_within
        on new_users.user_id = recommended_within.user_id

)

select * from final

-- One row per user: the profile fields the audience files carry (AUDIENCES.md, "Profile fields").
-- usersize: the user's preferred mens_size (int_user_preferred_sizes), '' when none.
--
-- A view without a WITH clause, so that PostgreSQL merges it into each query reading it: the
-- reader's filters and joins (a layer's few thousand users) apply before these columns are computed.
-- (PostgreSQL computes a view with a WITH clause whole, for every user, before joining it.)
{{ config(materialized="view") }}

select
    app_users.user_id,
    app_users.is_live,
    app_users.created_at as signed_up_at,
    coalesce(app_users.username, '') as username,
    coalesce(app_users.first_name, '') as first_name,
    coalesce(preferred_sizes.usersize, '') as usersize,
    user_activities.last_active,
    {{ utc_text('user_activities.last_active') }} as last_active_text
from {{ ref('stg_tradeblock__users') }} as app_users
left join {{ ref('int_user_preferred_sizes') }} as preferred_sizes
    on app_users.user_id = preferred_sizes.user_id
left join {{ ref('stg_tradeblock__user_activities') }} as user_activities
    on app_users.user_id = user_activities.user_id

-- One row per user: the profile fields the audience files carry (AUDIENCES.md, "Profile fields").
-- usersize: the user's preferred mens_size; with several, the one whose attribute_preferences.id
-- is lowest, so a user always appears once and a re-run picks the same size.

with

users as (

    select * from {{ ref('stg_tradeblock__users') }}

),

user_activities as (

    select * from {{ ref('stg_tradeblock__user_activities') }}

),

user_preferences as (

    select * from {{ ref('stg_tradeblock__user_preferences') }}

),

attribute_preferences as (

    select * from {{ ref('stg_tradeblock__attribute_preferences') }}

),

attributes as (

    select * from {{ ref('stg_tradeblock__attributes') }}

),

attribute_values as (

    select * from {{ ref('stg_tradeblock__attribute_values') }}

),

preferred_sizes as (

    select distinct on (user_preferences.user_id)
        user_preferences.user_id,
        attribute_values.attribute_value as usersize
    from user_preferences
    inner join attribute_preferences
        on user_preferences.user_preference_id = attribute_preferences.user_preference_id
    inner join attributes
        on attribute_preferences.attribute_id = attributes.attribute_id
    inner join attribute_values
        on attribute_preferences.attribute_value_id = attribute_values.attribute_value_id
    where
        attribute_preferences.is_preferred
        and attributes.attribute_name = 'mens_size'
    order by user_preferences.user_id asc, attribute_preferences.attribute_preference_id asc

),

final as (

    select
        users.user_id,
        users.is_live,
        users.created_at as signed_up_at,
        coalesce(users.username, '') as username,
        coalesce(users.first_name, '') as first_name,
        coalesce(preferred_sizes.usersize, '') as usersize,
        user_activities.last_active,
        {{ utc_text('user_activities.last_active') }} as last_active_text
    from users
    left join preferred_sizes on users.user_id = preferred_sizes.user_id
    left join user_activities on users.user_id = user_activities.user_id

)

select * from final

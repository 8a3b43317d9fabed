-- Layer 5 base: live users with a first name who signed up between
-- as_of - new_user_max_age_days and as_of - new_user_min_age_hours, both ends included.

with

users as (

    select * from {{ ref('stg_tradeblock__users') }}

),

final as (

    select
        user_id,
        username,
        first_name,
        bio,
        created_at as signed_up_at
    from users
    where
        is_live
        and first_name is not null
        and created_at between {{ as_of_minus(days=var('new_user_max_age_days')) }}
        and {{ as_of_minus(hours=var('new_user_min_age_hours')) }}

)

select * from final

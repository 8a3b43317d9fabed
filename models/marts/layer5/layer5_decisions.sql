-- Every user and what the Layer 5 waterfall decided for them, for `sender explain`. One row per user.
-- The audience decides (int_layer5__audience): a user in it is `included` in their level's model;
-- anyone else is `excluded`, with the base condition that failed (AUDIENCES.md, Layer 5, step 1)
-- and its numbers. `unexplained` would mean the reasons below no longer match the base: tested never.

with

users as (

    select * from {{ ref('stg_tradeblock__users') }}

),

audience as (

    select * from {{ ref('int_layer5__audience') }}

),

sign_up_window as (

    select
        {{ as_of() }} as as_of,
        {{ as_of_minus(days=var('new_user_max_age_days')) }} as window_start,
        {{ as_of_minus(hours=var('new_user_min_age_hours')) }} as window_end,
        '{{ var("new_user_min_age_hours") }} hours to {{ var("new_user_max_age_days") }} days' as window_text

),

decided as (

    select
        users.user_id,
        users.created_at as signed_up_at,
        audience.new_user_level,
        audience.top_target_shoe,
        audience.top_target_shoe_variantid,
        sign_up_window.window_text,
        sign_up_window.as_of - users.created_at as age,
        case
            when not users.is_live then 'deleted'
            when users.first_name is null then 'no_first_name'
            when users.created_at > sign_up_window.window_end then 'signed_up_too_recently'
            when users.created_at < sign_up_window.window_start then 'signed_up_too_long_ago'
        end as failed_condition
    from users
    cross join sign_up_window
    left join audience on users.user_id = audience.user_id

),

classified as (

    select
        *,
        case
            -- in the audience although a base condition failed, or out of it although none did
            when (new_user_level is null) = (failed_condition is null) then 'unexplained'
            when new_user_level = 1 then 'no_shoes'
            when new_user_level = 2 then 'no_bio'
            when new_user_level = 3 then 'no_offers'
            when new_user_level = 4 then 'no_wishlist'
            when new_user_level = 5 then 'new_stars'
            else failed_condition
        end as reason_code
    from decided

),

described as (

    select
        *,
        case
            -- intervals compare cheaply; the numeric hours are computed once, for the text
            when age < {{ interval_literal_hours(0) }} then 'signs up after as_of'
            when age < {{ interval_literal_hours(48) }}
                then
                    'signed up ' || {{ one_decimal_text(interval_seconds('age') ~ ' / 3600', 'FM999990.0') }}
                    || ' hours ago'
            else 'signed up ' || {{ one_decimal_text(interval_seconds('age') ~ ' / 3600 / 24') }} || ' days ago'
        end as age_text,
        case
            when new_user_level is null or new_user_level < 3 then ''
            when top_target_shoe = '' then '; no target shoe found'
            else '; target shoe ' || top_target_shoe || ' (variant ' || top_target_shoe_variantid || ')'
        end as target_shoe_text
    from classified

),

final as (

    select
        user_id,
        case when new_user_level is null then 'excluded' else 'included' end as outcome,
        case
            when new_user_level = 1 then 'layer5_no_shoes'
            when new_user_level = 2 then 'layer5_no_bio'
            when new_user_level = 3 then 'layer5_no_offers'
            when new_user_level = 4 then 'layer5_no_wishlist'
            when new_user_level = 5 then 'layer5_new_stars'
        end as audience,
        reason_code,
        case reason_code
            when 'no_shoes' then 'level 1, No Shoes: nothing in their closet'
            when 'no_bio' then 'level 2, No Bio: has shoes, but no bio'
            when 'no_offers' then 'level 3, No Offers: has shoes and a bio, but made no offer'
            when 'no_wishlist' then 'level 4, No Wishlist: has shoes, a bio and an offer, but an empty wishlist'
            when 'new_stars' then 'level 5, New Stars: has shoes, a bio, an offer and a wishlist'
            when 'deleted' then 'deleted'
            when 'no_first_name' then 'has no first name'
            when 'unexplained' then 'the audience and the reasons of this model disagree'
            else age_text || ', outside the sign-up window (' || window_text || ' ago)'
        end
        || case when new_user_level is null then '' else ' (' || age_text || ')' end
        || target_shoe_text as reason,
        signed_up_at,
        new_user_level,
        top_target_shoe,
        top_target_shoe_variantid
    from described

)

select * from final

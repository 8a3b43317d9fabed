-- The new-user waterfall: each base user gets the first level whose condition holds,
-- so the five levels are mutually exclusive and cover every base user.
--   1 no shoes     no inventory_items row at all (any status)
--   2 no bio       bio is NULL or TRIM(bio) = ''
--   3 no offers    no offer created by the user
--   4 no wishlist  no live wishlist item
--   5 new stars    everyone left

with

new_users as (

    select * from {{ ref('int_layer5__new_users') }}

),

inventory_items as (

    select * from {{ ref('stg_tradeblock__inventory_items') }}

),

offers as (

    select * from {{ ref('stg_tradeblock__offers') }}

),

wishlist_items as (

    select * from {{ ref('stg_tradeblock__wishlist_items') }}

),

-- has_*: whether a row exists (macros/portable.sql: exists() in PostgreSQL, evaluated only for the users
-- whose level depends on it; a lateral lookup on Spark)
onboarding_steps as (

    {{ select_with_row_flags(
        columns=['new_users.user_id', 'new_users.signed_up_at', "coalesce(trim(new_users.bio), '') != '' as has_bio"],
        from_relation='new_users',
        flags={
            'has_shoes': ('inventory_items', 'inventory_items.user_id = new_users.user_id'),
            'has_offers': ('offers', 'offers.creator_user_id = new_users.user_id'),
            'has_wishlist': ('wishlist_items', 'wishlist_items.user_id = new_users.user_id and wishlist_items.is_live'),
        },
    ) }}

),

final as (

    select
        user_id,
        signed_up_at,
        case
            when not has_shoes then 1
            when not has_bio then 2
            when not has_offers then 3
            when not has_wishlist then 4
            else 5
        end as new_user_level
    from onboarding_steps

)

select * from final

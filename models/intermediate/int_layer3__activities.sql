-- Layer 3 activities of live users inside the window
--   as_of - (lookback_hours - cooling_hours) hours <= created_at < as_of - cooling_hours hours
-- (with the defaults: the 24 hours ending 12 hours before as_of). Every activity needs an
-- existing variant and product. An offer is represented by its first item (lowest
-- offer_items.id); if that item's variant or product is missing, the offer is not an activity.
-- priority: 1 offer_created, 2 closet_add, 3 wishlist_add (lower wins).

with

users as (

    select * from {{ ref('stg_tradeblock__users') }}

),

variants as (

    select * from {{ ref('int_variants') }}

),

inventory_items as (

    select * from {{ ref('stg_tradeblock__inventory_items') }}

),

wishlist_items as (

    select * from {{ ref('stg_tradeblock__wishlist_items') }}

),

offers as (

    select * from {{ ref('stg_tradeblock__offers') }}

),

offer_items as (

    select * from {{ ref('stg_tradeblock__offer_items') }}

),

closet_adds as (

    select
        user_id,
        'closet_add' as activity_type,
        2 as priority,
        inventory_item_id as activity_id,
        variant_id,
        created_at
    from inventory_items
    where
        is_open_for_trade
        and created_at >= {{ as_of_minus(hours=var('lookback_hours') - var('cooling_hours')) }}
        and created_at < {{ as_of_minus(hours=var('cooling_hours')) }}

),

wishlist_adds as (

    select
        user_id,
        'wishlist_add' as activity_type,
        3 as priority,
        wishlist_item_id as activity_id,
        variant_id,
        created_at
    from wishlist_items
    where
        is_live
        and created_at >= {{ as_of_minus(hours=var('lookback_hours') - var('cooling_hours')) }}
        and created_at < {{ as_of_minus(hours=var('cooling_hours')) }}

),

offers_in_window as (

    select * from offers
    where
        created_at >= {{ as_of_minus(hours=var('lookback_hours') - var('cooling_hours')) }}
        and created_at < {{ as_of_minus(hours=var('cooling_hours')) }}

),

-- each offer's first item, looked up through the index on offer_items.offer_id
first_offer_items as (

    select
        offers_in_window.offer_id,
        offers_in_window.creator_user_id,
        offers_in_window.created_at,
        first_item.variant_id
    from offers_in_window
    cross join lateral (
        select offer_items.variant_id
        from offer_items
        where offer_items.offer_id = offers_in_window.offer_id
        order by offer_items.offer_item_id asc
        limit 1
    ) as first_item

),

offers_created as (

    select
        creator_user_id as user_id,
        'offer_created' as activity_type,
        1 as priority,
        offer_id as activity_id,
        variant_id,
        created_at
    from first_offer_items

),

all_activities as (

    select * from closet_adds
    union all
    select * from wishlist_adds
    union all
    select * from offers_created

),

final as (

    select
        all_activities.user_id,
        all_activities.activity_type,
        all_activities.priority,
        all_activities.activity_id,
        all_activities.variant_id,
        variants.product_name,
        variants.variant_size,
        all_activities.created_at
    from all_activities
    inner join variants on all_activities.variant_id = variants.variant_id
    inner join users on all_activities.user_id = users.user_id
    where users.is_live

)

select * from final

-- Supply and demand per variant, counted over live users only:
-- open_inventory_count = OPEN_FOR_TRADE inventory items, live_wishlist_count = live wishlist items.
-- Variants with neither are absent (read a missing row as 0).

with

users as (

    select * from {{ ref('stg_tradeblock__users') }}

),

inventory_items as (

    select * from {{ ref('stg_tradeblock__inventory_items') }}

),

wishlist_items as (

    select * from {{ ref('stg_tradeblock__wishlist_items') }}

),

open_inventory as (

    select
        inventory_items.variant_id,
        count(*) as open_inventory_count
    from inventory_items
    inner join users on inventory_items.user_id = users.user_id
    where inventory_items.is_open_for_trade and users.is_live
    group by inventory_items.variant_id

),

live_wishlists as (

    select
        wishlist_items.variant_id,
        count(*) as live_wishlist_count
    from wishlist_items
    inner join users on wishlist_items.user_id = users.user_id
    where wishlist_items.is_live and users.is_live
    group by wishlist_items.variant_id

),

final as (

    select
        coalesce(open_inventory.variant_id, live_wishlists.variant_id) as variant_id,
        coalesce(open_inventory.open_inventory_count, 0) as open_inventory_count,
        coalesce(live_wishlists.live_wishlist_count, 0) as live_wishlist_count
    from open_inventory
    full outer join live_wishlists on open_inventory.variant_id = live_wishlists.variant_id

)

select * from final

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

-- one row per open inventory item and per live wishlist item, so that one join finds their live users
demand_items as (

    select
        variant_id,
        user_id,
        true as is_supply
    from inventory_items
    where is_open_for_trade

    union all

    select
        variant_id,
        user_id,
        false as is_supply
    from wishlist_items
    where is_live

),

final as (

    select
        demand_items.variant_id,
        count(*) filter (where demand_items.is_supply) as open_inventory_count,
        count(*) filter (where not demand_items.is_supply) as live_wishlist_count
    from demand_items
    inner join users on demand_items.user_id = users.user_id
    where users.is_live
    group by demand_items.variant_id

)

select * from final

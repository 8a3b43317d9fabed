-- Each active holder of a trending sneaker, matched to one item: the best-ranked trending
-- product they hold OPEN_FOR_TRADE; within it the variant with the most demand (live wishlist
-- items of live users), then the most recently added inventory item, then the lowest variant id.
-- Holders are live users whose last_active >= as_of - activity_days. Their profile fields ride along
-- for int_layer2__audience, which would otherwise join the profiles again.
--
-- Hash joins only: PostgreSQL estimates the items of the trending variants as if they were average
-- variants (about 70 items each) and looks them up one variant at a time in the index, but a trending
-- variant has thousands (330,000 open items at 1M users): one scan of inventory_items is 3x cheaper.
{{ config(pre_hook="{{ planner_setting('enable_nestloop', 'off') }}") }}

with

trending_products as (

    select * from {{ ref('int_layer2__trending_products') }}

),

variants as (

    select * from {{ ref('int_variants') }}

),

inventory_items as (

    select * from {{ ref('stg_tradeblock__inventory_items') }}

),

profiles as (

    select * from {{ ref('int_user_profiles') }}

),

variant_demand as (

    select * from {{ ref('int_variant_demand') }}

),

held_trending_items as (

    select
        inventory_items.user_id,
        inventory_items.variant_id,
        inventory_items.created_at as added_at,
        inventory_items.inventory_item_id,
        trending_products.product_name,
        trending_products.trending_rank,
        trending_products.trending_rank_label,
        variants.variant_size,
        coalesce(variant_demand.live_wishlist_count, 0) as wishlist_count,
        profiles.username,
        profiles.first_name,
        profiles.usersize,
        profiles.last_active_text
    from inventory_items
    inner join variants on inventory_items.variant_id = variants.variant_id
    inner join trending_products on variants.product_id = trending_products.product_id
    inner join profiles on inventory_items.user_id = profiles.user_id
    left join variant_demand on inventory_items.variant_id = variant_demand.variant_id
    where
        inventory_items.is_open_for_trade
        and profiles.is_live
        and profiles.last_active >= {{ as_of_minus(days=var('activity_days')) }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by user_id
            order by
                trending_rank asc,
                wishlist_count desc,
                added_at desc,
                variant_id asc,
                inventory_item_id asc
        ) as match_rank
    from held_trending_items

),

final as (

    select
        user_id,
        variant_id,
        product_name,
        variant_size,
        trending_rank,
        trending_rank_label,
        wishlist_count,
        username,
        first_name,
        usersize,
        last_active_text
    from ranked
    where match_rank = 1

)

select * from final

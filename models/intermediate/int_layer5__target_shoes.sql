-- The target shoe of each Layer 5 user in levels 3-5: the first of four fallback steps that
-- finds one. Each step picks one row per candidate; users for whom no step finds a shoe get empty fields.
--   1 live desired item: highest offers_count, newest created_at, lowest desired_items.id
--   2 item of the most recent offer: newest offers.created_at, lowest offer_items.id
--   3 live wishlist item: newest created_at, lowest id
--   4 like 2, but the variant or product may be gone ('Unknown Product')
-- Steps 1-3 need the variant and its product to exist (int_variants).
-- Steps 1 and 3 look up each candidate's best row (lateral ... limit 1), through the indexes on
-- user_id: a few thousand candidates read a few rows each instead of the whole tables. Steps 2 and 4
-- rank the candidates' offer items (pick = 1).

with

levels as (

    select * from {{ ref('int_layer5__levels') }}

),

-- not materialized: read in the lateral lookups, where each row must be found by its index
variants as {{ cte_hint('not materialized') }} (

    select * from {{ ref('int_variants') }}

),

product_variants as (

    select * from {{ ref('stg_tradeblock__product_variants') }}

),

products as (

    select * from {{ ref('stg_tradeblock__products') }}

),

desired_items as (

    select * from {{ ref('stg_tradeblock__desired_items') }}

),

offers as (

    select * from {{ ref('stg_tradeblock__offers') }}

),

offer_items as (

    select * from {{ ref('stg_tradeblock__offer_items') }}

),

wishlist_items as (

    select * from {{ ref('stg_tradeblock__wishlist_items') }}

),

candidates as (

    select user_id from levels
    where new_user_level >= 3

),

from_desired_items as (

    select
        candidates.user_id,
        picked.product_name,
        picked.variant_id
    from candidates
    cross join lateral (
        select
            variants.product_name,
            variants.variant_id
        from desired_items
        inner join variants on desired_items.variant_id = variants.variant_id
        where desired_items.user_id = candidates.user_id and desired_items.is_live
        order by
            desired_items.offers_count desc,
            desired_items.created_at desc,
            desired_items.desired_item_id asc
        limit 1
    ) as picked

),

offered_items as (

    select
        offers.creator_user_id as user_id,
        offers.created_at as offered_at,
        offer_items.offer_item_id,
        offer_items.variant_id
    from offers
    inner join candidates on offers.creator_user_id = candidates.user_id
    inner join offer_items on offers.offer_id = offer_items.offer_id
    where offer_items.variant_id is not null

),

from_recent_offer as (

    select
        offered_items.user_id,
        variants.product_name,
        variants.variant_id,
        row_number() over (
            partition by offered_items.user_id
            order by offered_items.offered_at desc, offered_items.offer_item_id asc
        ) as pick
    from offered_items
    inner join variants on offered_items.variant_id = variants.variant_id

),

from_wishlist_items as (

    select
        candidates.user_id,
        picked.product_name,
        picked.variant_id
    from candidates
    cross join lateral (
        select
            variants.product_name,
            variants.variant_id
        from wishlist_items
        inner join variants on wishlist_items.variant_id = variants.variant_id
        where wishlist_items.user_id = candidates.user_id and wishlist_items.is_live
        order by wishlist_items.created_at desc, wishlist_items.wishlist_item_id asc
        limit 1
    ) as picked

),

from_any_offer_item as (

    select
        offered_items.user_id,
        coalesce(products.product_name, 'Unknown Product') as product_name,
        offered_items.variant_id,
        row_number() over (
            partition by offered_items.user_id
            order by offered_items.offered_at desc, offered_items.offer_item_id asc
        ) as pick
    from offered_items
    left join product_variants on offered_items.variant_id = product_variants.variant_id
    left join products on product_variants.product_id = products.product_id

),

final as (

    select
        candidates.user_id,
        coalesce(
            from_desired_items.product_name,
            from_recent_offer.product_name,
            from_wishlist_items.product_name,
            from_any_offer_item.product_name,
            ''
        ) as top_target_shoe,
        coalesce(
            from_desired_items.variant_id,
            from_recent_offer.variant_id,
            from_wishlist_items.variant_id,
            from_any_offer_item.variant_id
        ) as top_target_shoe_variant_id
    from candidates
    left join from_desired_items on candidates.user_id = from_desired_items.user_id
    left join from_recent_offer
        on candidates.user_id = from_recent_offer.user_id and from_recent_offer.pick = 1
    left join from_wishlist_items on candidates.user_id = from_wishlist_items.user_id
    left join from_any_offer_item
        on candidates.user_id = from_any_offer_item.user_id and from_any_offer_item.pick = 1

)

select * from final

-- This week's trending products: ranked by the number of distinct offers created in
-- [as_of - trending_lookback_days, as_of) with an item of one of the product's variants
-- (variant and product must exist); ties by product name (byte order, whatever the database
-- collation), then product id. Top trending_top_n.

with

variants as (

    select * from {{ ref('int_variants') }}

),

offers as (

    select * from {{ ref('stg_tradeblock__offers') }}

),

offer_items as (

    select * from {{ ref('stg_tradeblock__offer_items') }}

),

offer_counts as (

    select
        variants.product_id,
        variants.product_name,
        count(distinct offers.offer_id) as offer_count
    from offers
    inner join offer_items on offers.offer_id = offer_items.offer_id
    inner join variants on offer_items.variant_id = variants.variant_id
    where
        offers.created_at >= {{ as_of_minus(days=var('trending_lookback_days')) }}
        and offers.created_at < {{ as_of() }}
    group by variants.product_id, variants.product_name

),

ranked as (

    select
        *,
        row_number() over (
            order by offer_count desc, {{ bytewise('product_name') }} asc, product_id asc
        ) as trending_rank
    from offer_counts

),

final as (

    select
        product_id,
        product_name,
        offer_count,
        trending_rank,
        {{ ordinal('trending_rank') }} as trending_rank_label
    from ranked
    where trending_rank <= {{ var('trending_top_n') }}

)

select * from final

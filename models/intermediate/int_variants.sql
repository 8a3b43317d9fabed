-- Variants whose product exists, with the product name and the variant's size
-- (index_cache mens_size, 'Unknown' when absent). Joining to this model is how an audience
-- requires "an existing variant and product". The unique index serves the lookups of one variant
-- at a time (int_layer5__target_shoes).
{{ config(indexes=[{"columns": ["variant_id"], "unique": True}]) }}

with

product_variants as (

    select * from {{ ref('stg_tradeblock__product_variants') }}

),

products as (

    select * from {{ ref('stg_tradeblock__products') }}

),

final as (

    select
        product_variants.variant_id,
        product_variants.product_id,
        products.product_name,
        coalesce(product_variants.mens_size, 'Unknown') as variant_size
    from product_variants
    inner join products on product_variants.product_id = products.product_id

)

select * from final

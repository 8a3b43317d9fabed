with

audience as (

    select * from {{ ref('int_layer2__audience') }}

),

final as (

    select
        user_id,
        username,
        first_name as {{ adapter.quote('firstName') }},
        usersize,
        product_name,
        variant_id as {{ adapter.quote('variantID') }},
        relevant_variant_size,
        trending_rank_label as trending_rank,
        wishlist_count,
        last_active_text as {{ adapter.quote('lastActive') }},
        export_order
    from audience
    where trending_rank > 1

)

select * from final

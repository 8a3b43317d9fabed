with

audience as (

    select * from {{ ref('int_layer3__audience') }}

),

final as (

    select
        user_id,
        username,
        first_name as {{ adapter.quote('firstName') }},
        usersize,
        relevant_variant_size,
        product_name,
        variant_id as {{ adapter.quote('variantID') }},
        last_active_text as {{ adapter.quote('lastActive') }},
        inventory_count,
        export_order
    from audience
    where activity_type = 'wishlist_add'

)

select * from final

with

audience as (

    select * from {{ ref('int_layer5__audience') }}

),

final as (

    select
        user_id,
        username,
        first_name as {{ adapter.quote('firstName') }},
        new_user_level,
        top_target_shoe,
        top_target_shoe_variantid,
        export_order
    from audience
    where new_user_level = 5

)

select * from final

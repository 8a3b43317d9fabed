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
        export_order
    from audience
    where new_user_level = 2

)

select * from final

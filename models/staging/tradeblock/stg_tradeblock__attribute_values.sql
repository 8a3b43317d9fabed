with

source as (

    select * from {{ source('tradeblock', 'attribute_values') }}

),

final as (

    select
        id as attribute_value_id,
        attribute_id,
        value as attribute_value
    from source

)

select * from final

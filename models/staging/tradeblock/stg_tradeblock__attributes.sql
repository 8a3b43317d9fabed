with

source as (

    select * from {{ source('tradeblock', 'attributes') }}

),

final as (

    select
        id as attribute_id,
        name as attribute_name
    from source

)

select * from final

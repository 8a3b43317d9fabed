with

source as (

    select * from {{ source('tradeblock', 'products') }}

),

final as (

    select
        id as product_id,
        name as product_name
    from source

)

select * from final

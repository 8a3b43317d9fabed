with

source as (

    select * from {{ source('tradeblock', 'device_tokens') }}

),

final as (

    select
        id as device_token_id,
        user_id,
        token,
        platform,
        created_at,
        updated_at
    from source

)

select * from final

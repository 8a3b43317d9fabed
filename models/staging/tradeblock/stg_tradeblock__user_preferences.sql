with

source as (

    select * from {{ source('tradeblock', 'user_preferences') }}

),

final as (

    select
        id as user_preference_id,
        user_id
    from source

)

select * from final

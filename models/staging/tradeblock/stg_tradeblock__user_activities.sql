with

source as (

    select * from {{ source('tradeblock', 'user_activities') }}

),

final as (

    select
        user_id,
        last_active
    from source

)

select * from final

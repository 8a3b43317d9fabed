with

source as (

    select * from {{ source('tradeblock', 'offers') }}

),

final as (

    select
        id as offer_id,
        creator_user_id,
        created_at
    from source

)

select * from final

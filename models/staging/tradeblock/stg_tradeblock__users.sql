with

source as (

    select * from {{ source('tradeblock', 'users') }}

),

final as (

    select
        id as user_id,
        username,
        first_name,
        bio,
        created_at,
        deleted_at,
        deleted_at = 0 as is_live
    from source

)

select * from final

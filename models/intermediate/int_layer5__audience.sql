-- Every Layer 5 user with the columns of the level files, in file order (newest signup first,
-- then user_id). The five audience models each take one level from here.

with

new_users as (

    select * from {{ ref('int_layer5__new_users') }}

),

levels as (

    select * from {{ ref('int_layer5__levels') }}

),

target_shoes as (

    select * from {{ ref('int_layer5__target_shoes') }}

),

profiles as (

    select * from {{ ref('int_user_profiles') }}

),

final as (

    select
        new_users.user_id,
        profiles.username,
        profiles.first_name,
        levels.new_user_level,
        coalesce(target_shoes.top_target_shoe, '') as top_target_shoe,
        coalesce(
            cast(target_shoes.top_target_shoe_variant_id as {{ data_type('text') }}), ''
        ) as top_target_shoe_variantid,
        cast(row_number() over (order by new_users.signed_up_at desc, new_users.user_id asc) as bigint) as export_order
    from new_users
    inner join levels on new_users.user_id = levels.user_id
    inner join profiles on new_users.user_id = profiles.user_id
    left join target_shoes on new_users.user_id = target_shoes.user_id

)

select * from final

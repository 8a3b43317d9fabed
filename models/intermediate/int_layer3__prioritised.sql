-- One activity per Layer 3 user: the highest priority (offer_created > closet_add >
-- wishlist_add), then the newest, then the lowest variant id (then the lowest item id, so
-- that a re-run never changes the choice).

with

activities as (

    select * from {{ ref('int_layer3__activities') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by user_id
            order by priority asc, created_at desc, variant_id asc, activity_id asc
        ) as activity_rank
    from activities

),

final as (

    select
        user_id,
        activity_type,
        activity_id,
        variant_id,
        product_name,
        variant_size,
        created_at
    from ranked
    where activity_rank = 1

)

select * from final

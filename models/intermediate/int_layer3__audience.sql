-- Layer 3 users with the columns of their file, after the demand filter, in file order
-- (most recent activity first, then user_id). The filter applies to the kept activity only:
-- a user whose kept activity lacks demand is dropped, never moved to a lower action.
--   offer_created, wishlist_add: inventory_count >= min_inventory_count
--   closet_add:                  wishlist_count  >= min_wishlist_count

with

prioritised as (

    select * from {{ ref('int_layer3__prioritised') }}

),

profiles as (

    select * from {{ ref('int_user_profiles') }}

),

variant_demand as (

    select * from {{ ref('int_variant_demand') }}

),

enriched as (

    select
        prioritised.user_id,
        prioritised.activity_type,
        prioritised.created_at as activity_at,
        profiles.username,
        profiles.first_name,
        profiles.usersize,
        prioritised.variant_size as relevant_variant_size,
        prioritised.product_name,
        prioritised.variant_id,
        profiles.last_active_text,
        cast(coalesce(variant_demand.open_inventory_count, 0) as integer) as inventory_count,
        cast(coalesce(variant_demand.live_wishlist_count, 0) as integer) as wishlist_count
    from prioritised
    inner join profiles on prioritised.user_id = profiles.user_id
    left join variant_demand on prioritised.variant_id = variant_demand.variant_id

),

with_demand as (

    select * from enriched
    where
        (
            activity_type in ('offer_created', 'wishlist_add')
            and inventory_count >= {{ var('min_inventory_count') }}
        )
        or (
            activity_type = 'closet_add'
            and wishlist_count >= {{ var('min_wishlist_count') }}
        )

),

final as (

    select
        *,
        cast(row_number() over (order by activity_at desc, user_id asc) as bigint) as export_order
    from with_demand

)

select * from final

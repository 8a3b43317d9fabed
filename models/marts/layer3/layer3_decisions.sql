-- Every user and what Layer 3 decided for them, for `sender explain`. One row per user.
-- The audience decides (int_layer3__audience): a user in it is `included` in their kept activity's
-- model; anyone else is `excluded`: deleted, no activity in the window, or their kept activity
-- (int_layer3__prioritised) dropped by the demand filter, with the count and the threshold.
-- The other activities of the window lost to the kept one (superseded: lower priority, or older).
-- `unexplained` would mean the reasons below no longer match the audience: tested never.

with

users as (

    select * from {{ ref('stg_tradeblock__users') }}

),

activities as (

    select * from {{ ref('int_layer3__activities') }}

),

prioritised as (

    select * from {{ ref('int_layer3__prioritised') }}

),

audience as (

    select * from {{ ref('int_layer3__audience') }}

),

variant_demand as (

    select * from {{ ref('int_variant_demand') }}

),

-- materialized: one row, computed once (inlined, its to_char calls would run for every user)
activity_window as {{ cte_hint('materialized') }} (

    select
        'no closet add (open for trade), wishlist add or offer from '
        || {{ utc_minute_text(as_of_minus(hours=var('lookback_hours') - var('cooling_hours'))) }}
        || ' to '
        || {{ utc_minute_text(as_of_minus(hours=var('cooling_hours'))) }}
        || ' UTC' as window_text

),

superseded_by_type as (

    select
        activities.user_id,
        activities.activity_type,
        count(*) as activity_count
    from activities
    left join prioritised on activities.activity_id = prioritised.activity_id
    where prioritised.activity_id is null
    group by activities.user_id, activities.activity_type

),

superseded_counts as (

    select
        user_id,
        activity_type,
        activity_count,
        activity_count || ' '
        || case
            when activity_type = 'offer_created' then 'offer'
            when activity_type = 'closet_add' then 'closet add'
            else 'wishlist add'
        end
        || case when activity_count > 1 then 's' else '' end as count_text
    from superseded_by_type

),

superseded as (

    select
        user_id,
        cast(sum(activity_count) as integer) as superseded_activities,
        {{ string_agg_ordered('count_text', "', '", 'activity_type') }} as superseded_text
    from superseded_counts
    group by user_id

),

kept as (

    select
        prioritised.user_id,
        prioritised.activity_type,
        prioritised.created_at as activity_at,
        prioritised.product_name,
        prioritised.variant_id,
        prioritised.variant_size,
        case
            when prioritised.activity_type = 'closet_add'
                then cast(coalesce(variant_demand.live_wishlist_count, 0) as integer)
            else cast(coalesce(variant_demand.open_inventory_count, 0) as integer)
        end as demand_count,
        case
            when prioritised.activity_type = 'closet_add' then {{ var('min_wishlist_count') }}
            else {{ var('min_inventory_count') }}
        end as demand_threshold,
        case
            when prioritised.activity_type = 'offer_created' then 'made an offer'
            when prioritised.activity_type = 'closet_add' then 'added a shoe to their closet, open for trade,'
            else 'added a shoe to their wishlist'
        end as activity_text,
        case
            when prioritised.activity_type = 'closet_add' then ' on wishlists'
            else ' open for trade'
        end as demand_text
    from prioritised
    left join variant_demand on prioritised.variant_id = variant_demand.variant_id

),

-- Every user with an activity in the window: the kept one, what it superseded and the audience's
-- decision, one row per user, so that every user is looked up once below. (Users with superseded
-- activities and the audience are subsets of the users with a kept activity; a user of the audience
-- without one would fail the agrees_with_audiences test.)
considered as (

    select
        kept.user_id,
        kept.activity_type,
        kept.activity_at,
        kept.product_name,
        kept.variant_id,
        kept.variant_size,
        kept.demand_count,
        kept.demand_threshold,
        kept.activity_text,
        kept.demand_text,
        superseded.superseded_activities,
        superseded.superseded_text,
        audience.activity_type as included_as
    from kept
    left join superseded on kept.user_id = superseded.user_id
    left join audience on kept.user_id = audience.user_id

),

decided as (

    select
        users.user_id,
        considered.activity_type,
        considered.activity_at,
        considered.product_name,
        considered.variant_id,
        considered.demand_count,
        considered.demand_threshold,
        coalesce(considered.superseded_activities, 0) as superseded_activities,
        considered.included_as,
        case
            when not users.is_live then 'deleted'
            when considered.user_id is null then 'no_activity_in_window'
            when considered.demand_count < considered.demand_threshold then 'below_demand_threshold'
        end as failed_condition,
        considered.activity_text
        || ' at ' || {{ utc_minute_text('considered.activity_at', with_utc=true) }}
        || ' (' || considered.product_name || ', size ' || considered.variant_size || '); '
        || 'that variant: ' || considered.demand_count || considered.demand_text
        || ', at least ' || considered.demand_threshold || ' needed'
        || coalesce('; it superseded ' || considered.superseded_text || ' of the window', '') as kept_text,
        activity_window.window_text
    from users
    cross join activity_window
    left join considered on users.user_id = considered.user_id

),

classified as (

    select
        *,
        case
            -- in the audience although a condition failed, or out of it although none did
            when (included_as is null) = (failed_condition is null) then 'unexplained'
            else coalesce(included_as, failed_condition)
        end as reason_code
    from decided

),

final as (

    select
        user_id,
        case when included_as is null then 'excluded' else 'included' end as outcome,
        case
            when included_as = 'offer_created' then 'layer3_offer_creators'
            when included_as = 'closet_add' then 'layer3_closet_adders'
            when included_as = 'wishlist_add' then 'layer3_wishlist_adders'
        end as audience,
        reason_code,
        case reason_code
            when 'deleted' then 'deleted'
            when 'no_activity_in_window' then window_text
            when 'below_demand_threshold' then 'dropped by the demand filter: ' || kept_text
            when 'unexplained' then 'the audience and the reasons of this model disagree: ' || coalesce(kept_text, '')
            else kept_text
        end as reason,
        activity_type,
        activity_at,
        product_name,
        variant_id,
        demand_count,
        demand_threshold,
        superseded_activities
    from classified

)

select * from final

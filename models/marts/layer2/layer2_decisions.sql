-- Every user and what Layer 2 decided for them, for `sender explain`. One row per user.
-- The audience decides (int_layer2__audience): a user in it is `included` in the model of their
-- trending rank; anyone else is `excluded`: deleted, inactive, holding no trending product open for
-- trade, or matched (int_layer2__holder_matches) to a variant with too little demand, with the count
-- and the threshold. `unexplained` would mean the reasons below no longer match the audience: tested never.

with

users as (

    select * from {{ ref('stg_tradeblock__users') }}

),

user_activities as (

    select * from {{ ref('stg_tradeblock__user_activities') }}

),

trending_products as (

    select * from {{ ref('int_layer2__trending_products') }}

),

holder_matches as (

    select * from {{ ref('int_layer2__holder_matches') }}

),

audience as (

    select * from {{ ref('int_layer2__audience') }}

),

-- materialized: one row, computed once (inlined, its expressions would run for every user)
thresholds as {{ cte_hint('materialized') }} (

    select
        {{ as_of() }} as as_of,
        {{ as_of_minus(days=var('activity_days')) }} as active_since,
        {{ var('min_demand') }} as demand_threshold,
        (select count(*) from trending_products) as trending_products

),

-- The holders of a trending product with the audience's decision, one row per holder, so that every
-- user is looked up once below. (The audience is a subset of the holder matches; a user of the audience
-- without a match would fail the agrees_with_audiences test.)
matched as (

    select
        holder_matches.user_id,
        holder_matches.product_name,
        holder_matches.variant_id,
        holder_matches.variant_size,
        holder_matches.trending_rank,
        holder_matches.trending_rank_label,
        holder_matches.wishlist_count,
        audience.trending_rank as included_rank
    from holder_matches
    left join audience on holder_matches.user_id = audience.user_id

),

decided as (

    select
        users.user_id,
        matched.product_name,
        matched.variant_id,
        cast(matched.trending_rank as integer) as trending_rank,
        cast(matched.wishlist_count as integer) as wishlist_count,
        thresholds.demand_threshold,
        user_activities.last_active,
        case
            when matched.included_rank = 1 then 'trending_top1'
            when matched.included_rank > 1 then 'trending_top2_10'
        end as included_as,
        case
            when not users.is_live then 'deleted'
            when user_activities.last_active is null or user_activities.last_active < thresholds.active_since
                then 'inactive'
            when matched.user_id is null then 'no_trending_product'
            when matched.wishlist_count < thresholds.demand_threshold then 'below_demand_threshold'
        end as failed_condition,
        'holds the ' || matched.trending_rank_label || ' trending product, ' || matched.product_name
        || ' (size ' || matched.variant_size || '), open for trade; that variant: '
        || matched.wishlist_count || ' on wishlists, at least ' || thresholds.demand_threshold || ' needed'
            as match_text,
        case
            when user_activities.last_active is null then 'never active (no last_active)'
            else
                'last active '
                || {{ one_decimal_text(
                    interval_seconds('thresholds.as_of - user_activities.last_active') ~ ' / 86400'
                ) }}
                || ' days ago, more than ' || {{ var('activity_days') }} || ' days'
        end as inactive_text,
        'holds none of the ' || thresholds.trending_products || ' trending products open for trade'
            as no_trending_text
    from users
    cross join thresholds
    left join user_activities on users.user_id = user_activities.user_id
    left join matched on users.user_id = matched.user_id

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
            when included_as = 'trending_top1' then 'layer2_trending_top1'
            when included_as = 'trending_top2_10' then 'layer2_trending_top2_10'
        end as audience,
        reason_code,
        case reason_code
            when 'deleted' then 'deleted'
            when 'inactive' then inactive_text
            when 'no_trending_product' then no_trending_text
            when 'below_demand_threshold' then 'dropped by the demand filter: ' || match_text
            when 'unexplained' then 'the audience and the reasons of this model disagree: ' || coalesce(match_text, '')
            else match_text
        end as reason,
        product_name,
        variant_id,
        trending_rank,
        wishlist_count,
        demand_threshold,
        last_active
    from classified

)

select * from final

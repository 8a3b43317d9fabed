-- Layer 2 holders whose matched variant has enough demand (wishlist_count >= min_demand),
-- with the columns of their file, in file order (rank, then demand, then user_id).

-- A table: the audience models of this layer each read their slice of it.
{{ config(materialized="table") }}

with

holder_matches as (

    select * from {{ ref('int_layer2__holder_matches') }}

),

profiles as (

    select * from {{ ref('int_user_profiles') }}

),

final as (

    select
        holder_matches.user_id,
        profiles.username,
        profiles.first_name,
        profiles.usersize,
        holder_matches.product_name,
        holder_matches.variant_id,
        holder_matches.variant_size as relevant_variant_size,
        holder_matches.trending_rank,
        holder_matches.trending_rank_label,
        cast(holder_matches.wishlist_count as integer) as wishlist_count,
        profiles.last_active_text,
        row_number() over (
            order by
                holder_matches.trending_rank asc,
                holder_matches.wishlist_count desc,
                holder_matches.user_id asc
        ) as export_order
    from holder_matches
    inner join profiles on holder_matches.user_id = profiles.user_id
    where holder_matches.wishlist_count >= {{ var('min_demand') }}

)

select * from final

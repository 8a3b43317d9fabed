-- Layer 2 holders whose matched variant has enough demand (wishlist_count >= min_demand),
-- with the columns of their file, in file order (rank, then demand, then user_id).

with

holder_matches as (

    select * from {{ ref('int_layer2__holder_matches') }}

),

final as (

    select
        holder_matches.user_id,
        holder_matches.username,
        holder_matches.first_name,
        holder_matches.usersize,
        holder_matches.product_name,
        holder_matches.variant_id,
        holder_matches.variant_size as relevant_variant_size,
        holder_matches.trending_rank,
        holder_matches.trending_rank_label,
        cast(holder_matches.wishlist_count as integer) as wishlist_count,
        holder_matches.last_active_text,
        cast(
            row_number() over (
                order by
                    holder_matches.trending_rank asc,
                    holder_matches.wishlist_count desc,
                    holder_matches.user_id asc
            ) as bigint
        ) as export_order
    from holder_matches
    where holder_matches.wishlist_count >= {{ var('min_demand') }}

)

select * from final

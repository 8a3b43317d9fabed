select
    id as desired_item_id,
    user_id,
    product_variant_id as variant_id,
    offers_count,
    created_at,
    deleted_at,
    deleted_at = 0 as is_live
from {{ source('tradeblock', 'desired_items') }}

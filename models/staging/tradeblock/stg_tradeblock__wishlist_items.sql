select
    id as wishlist_item_id,
    user_id,
    product_variant_id as variant_id,
    created_at,
    deleted_at,
    deleted_at = 0 as is_live
from {{ source('tradeblock', 'wishlist_items') }}

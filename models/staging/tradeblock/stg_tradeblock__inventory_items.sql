select
    id as inventory_item_id,
    user_id,
    product_variant_id as variant_id,
    status,
    created_at,
    status = 'OPEN_FOR_TRADE' as is_open_for_trade
from {{ source('tradeblock', 'inventory_items') }}

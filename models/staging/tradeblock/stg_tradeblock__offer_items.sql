select
    id as offer_item_id,
    offer_id,
    product_variant_id as variant_id
from {{ source('tradeblock', 'offer_items') }}

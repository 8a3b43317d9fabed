select
    id as variant_id,
    product_id,
    index_cache ->> 'mens_size' as mens_size
from {{ source('tradeblock', 'product_variants') }}

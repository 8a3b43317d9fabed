select
    id as variant_id,
    product_id,
    {{ json_text('index_cache', 'mens_size') }} as mens_size
from {{ source('tradeblock', 'product_variants') }}

select
    id as product_id,
    name as product_name
from {{ source('tradeblock', 'products') }}

select
    id as attribute_id,
    name as attribute_name
from {{ source('tradeblock', 'attributes') }}

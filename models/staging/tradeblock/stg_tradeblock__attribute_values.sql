select
    id as attribute_value_id,
    attribute_id,
    value as attribute_value
from {{ source('tradeblock', 'attribute_values') }}

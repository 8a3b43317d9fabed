select
    id as attribute_preference_id,
    user_preference_id,
    attribute_id,
    attribute_value_id,
    preferred as is_preferred
from {{ source('tradeblock', 'attribute_preferences') }}

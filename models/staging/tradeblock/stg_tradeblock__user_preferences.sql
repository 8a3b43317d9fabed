select
    id as user_preference_id,
    user_id
from {{ source('tradeblock', 'user_preferences') }}

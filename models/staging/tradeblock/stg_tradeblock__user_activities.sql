select
    user_id,
    last_active
from {{ source('tradeblock', 'user_activities') }}

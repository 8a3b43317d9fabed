select
    id as offer_id,
    creator_user_id,
    created_at
from {{ source('tradeblock', 'offers') }}

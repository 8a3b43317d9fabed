select
    id as user_id,
    username,
    first_name,
    bio,
    created_at,
    deleted_at,
    deleted_at = 0 as is_live
from {{ source('tradeblock', 'users') }}

-- Column names come from the var device_tokens (dbt_project.yml), since the production shape
-- of this table is not known; quote_identifier quotes and escapes them (macros/identifiers.sql).
{%- set columns = var('device_tokens') %}

select
    {{ quote_identifier(columns['token'], 'var device_tokens.token') }} as token,
    {{ quote_identifier(columns['user_id'], 'var device_tokens.user_id') }} as user_id,
    {{ quote_identifier(columns['platform'], 'var device_tokens.platform') }} as platform
from {{ source('tradeblock', 'device_tokens') }}

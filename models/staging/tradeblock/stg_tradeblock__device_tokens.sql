-- Column names come from the var device_tokens (dbt_project.yml), since the production shape
-- of this table is not known.
{%- set columns = var('device_tokens') %}

with

source as (

    select * from {{ source('tradeblock', 'device_tokens') }}

),

final as (

    select
        {{ adapter.quote(columns['token']) }} as token,
        {{ adapter.quote(columns['user_id']) }} as user_id,
        {{ adapter.quote(columns['platform']) }} as platform
    from source

)

select * from final

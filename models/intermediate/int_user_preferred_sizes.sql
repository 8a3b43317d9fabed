-- The preferred mens_size of each user who has one; with several, the one whose
-- attribute_preferences.id is lowest, so a user appears once and a re-run picks the same size.
-- The unique index tells PostgreSQL so: a query reading int_user_profiles without usersize skips this join.
{{ config(indexes=[{"columns": ["user_id"], "unique": True}]) }}

with

user_preferences as (

    select * from {{ ref('stg_tradeblock__user_preferences') }}

),

attribute_preferences as (

    select * from {{ ref('stg_tradeblock__attribute_preferences') }}

),

attributes as (

    select * from {{ ref('stg_tradeblock__attributes') }}

),

attribute_values as (

    select * from {{ ref('stg_tradeblock__attribute_values') }}

),

-- first_row_per: distinct on in PostgreSQL (measured faster here than row_number()), elsewhere row_number()
final as (

    {% call first_row_per(
        partition_by='user_preferences.user_id',
        order_by='attribute_preferences.attribute_preference_id asc',
        columns={'user_id': 'user_preferences.user_id', 'usersize': 'attribute_values.attribute_value'},
    ) %}
    from user_preferences
    inner join attribute_preferences
        on user_preferences.user_preference_id = attribute_preferences.user_preference_id
    inner join attributes
        on attribute_preferences.attribute_id = attributes.attribute_id
    inner join attribute_values
        on attribute_preferences.attribute_value_id = attribute_values.attribute_value_id
    where
        attribute_preferences.is_preferred
        and attributes.attribute_name = 'mens_size'
    {% endcall %}

)

select * from final

{#- No value of column_name in the tested model appears in any of the `others` models. -#}
{% test mutually_exclusive(model, column_name, others) %}

with

tested as (
    select {{ column_name }} as member_key from {{ model }}
),

others as (
    {% for other in others %}
        select {{ column_name }} as member_key, '{{ other }}' as other_model from {{ other }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

final as (
    select
        tested.member_key,
        others.other_model
    from tested
    inner join others on tested.member_key = others.member_key
)

select * from final

{% endtest %}

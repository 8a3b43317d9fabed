{#-
    Every value of column_name in the tested model appears in exactly one of `models`
    (exclusive), and those models hold no value that the tested model lacks (complete).
    Fails with one row per offending value and how often it appears.
-#}
{% test exactly_one_of(model, column_name, models) %}

with

members as (
    {% for member in models %}
        select {{ column_name }} as member_key from {{ member }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

member_counts as (
    select
        member_key,
        count(*) as appearances
    from members
    group by member_key
),

base as (
    select distinct {{ column_name }} as member_key from {{ model }}
),

final as (
    select
        coalesce(base.member_key, member_counts.member_key) as member_key,
        coalesce(member_counts.appearances, 0) as appearances,
        base.member_key is not null as in_base
    from base
    full outer join member_counts on base.member_key = member_counts.member_key
    where
        base.member_key is null
        or member_counts.appearances is distinct from 1
)

select * from final

{% endtest %}

{#-
    A decisions model (one row per user: outcome, audience) agrees with the audience models: every
    user of an audience model is `included` with that model's name in `audience`, and every
    `included` user is in the model it names. Fails with one row per disagreement.
-#}
{% test agrees_with_audiences(model, column_name, audiences) %}

with

audience_members as (
    {% for audience in audiences %}
        select
            {{ column_name }} as member_key,
            '{{ audience.identifier }}' as audience
        from {{ audience }}
        {% if not loop.last %}union all{% endif %}
    {% endfor %}
),

included as (
    select
        {{ column_name }} as member_key,
        audience
    from {{ model }}
    where outcome = 'included'
),

final as (
    select
        coalesce(included.member_key, audience_members.member_key) as member_key,
        included.audience as decided_audience,
        audience_members.audience as actual_audience
    from included
    full outer join audience_members
        on
            included.member_key = audience_members.member_key
            and included.audience = audience_members.audience
    where included.member_key is null or audience_members.member_key is null
)

select * from final

{% endtest %}

{#-
    Every row of a decisions model is explained, in one pass over its (1M-row) table: outcome is
    `included` or `excluded`, reason_code one of reason_codes, reason not null. Fails with the rows
    that are not, and what is wrong with each. (Five not_null / accepted_values tests in one scan.)
-#}
{% test every_decision_explained(model, reason_codes) %}

with

checked as (
    select
        user_id,
        outcome,
        reason_code,
        case
            when outcome is null or outcome not in ('included', 'excluded') then 'outcome'
            when reason_code is null
                or reason_code not in ({% for code in reason_codes %}'{{ code }}'{{ ", " if not loop.last }}{% endfor %})
                then 'reason_code'
            when reason is null then 'reason'
        end as wrong_column
    from {{ model }}
),

final as (
    select * from checked
    where wrong_column is not null
)

select * from final

{% endtest %}

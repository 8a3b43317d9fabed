{#-
    Every value of column_name is the ordinal label (macro ordinal) of a whole number from
    min_value to max_value, e.g. 2nd ... 10th for 2 and 10. NULL fails too.
-#}
{% test ordinal_between(model, column_name, min_value, max_value) %}

with

labels as (
    select {{ ordinal('numbers.n') }} as label
    from {{ integer_series(min_value, max_value) }} as numbers (n)
),

final as (
    select {{ column_name }} as failing_value
    from {{ model }}
    where
        {{ column_name }} is null
        or {{ column_name }} not in (select labels.label from labels)
)

select * from final

{% endtest %}

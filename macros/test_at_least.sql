{#- Every value of column_name is >= min_value (NULL fails too). -#}
{% test at_least(model, column_name, min_value) %}

select {{ column_name }} as failing_value
from {{ model }}
where {{ column_name }} is null or {{ column_name }} < {{ min_value }}

{% endtest %}

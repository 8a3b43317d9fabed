{#- Every value of column_name is a space-separated list of known layer ids (e.g. '2 3'). -#}
{% test layer_list(model, column_name, known_layers) %}
    {{ return(adapter.dispatch('test_layer_list')(model, column_name, known_layers)) }}
{% endtest %}

{% macro default__test_layer_list(model, column_name, known_layers) %}

select {{ column_name }} as failing_value
from {{ model }}
where
    {{ column_name }} is null
    or {{ column_name }} !~ '^[0-9]+( [0-9]+)*$'
    or not (
        regexp_split_to_array({{ column_name }}, ' ')::int []
        <@ array[{{ known_layers | join(', ') }}]::int []
    )

{% endmacro %}

{% macro spark__test_layer_list(model, column_name, known_layers) %}

select {{ column_name }} as failing_value
from {{ model }}
where
    {{ column_name }} is null
    or not {{ column_name }} rlike '^[0-9]+( [0-9]+)*$'
    or size(array_except(
        transform(split({{ column_name }}, ' '), layer -> cast(layer as int)),
        array({{ known_layers | join(', ') }})
    )) > 0

{% endmacro %}

{#- The reference time of every audience: var as_of, or the start of this dbt invocation. -#}
{% macro as_of() -%}
    {%- set value = var('as_of') or run_started_at.isoformat() -%}
    cast('{{ value }}' as timestamptz)
{%- endmacro %}

{#- as_of minus a number of hours/days given by a var, e.g. {{ as_of_minus(hours=var('cooling_hours')) }} -#}
{% macro as_of_minus(days=0, hours=0) -%}
    ({{ as_of() }} - make_interval(days => {{ days }}, hours => {{ hours }}))
{%- endmacro %}

{#- The reference time of every audience: var as_of, or the start of this dbt invocation. -#}
{% macro as_of() -%}
    {%- set value = var('as_of') or run_started_at.isoformat() -%}
    {{ timestamp_literal(value) }}
{%- endmacro %}

{#-
    as_of minus days and/or hours given by vars, e.g. {{ as_of_minus(hours=var('cooling_hours')) }}.
    A day is exactly 24 hours, whatever the session time zone (no daylight-saving shifts).
-#}
{% macro as_of_minus(days=0, hours=0) -%}
    ({{ as_of() }} - {{ hours_interval(days ~ ' * 24 + ' ~ hours) }})
{%- endmacro %}

{#-
    The reference time of every audience: var as_of, or the start of this dbt invocation. Anything but
    an ISO timestamp with an offset is refused before any SQL runs: it is written into a literal, and
    Spark (ANSI off) would turn a bad one into NULL, and every audience into an empty one, silently.
-#}
{% macro as_of() -%}
    {%- set value = var('as_of') or run_started_at -%}
    {%- set value = value if value is string else value.isoformat() -%}
    {%- set iso = '[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[T ]([01][0-9]|2[0-3]):[0-5][0-9]'
        ~ '(:[0-5][0-9](\\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)' -%}
    {%- if not modules.re.fullmatch(iso, value) -%}
        {{ exceptions.raise_compiler_error(
            'var as_of ' ~ shown(value) ~ ' is not an ISO timestamp with an offset, e.g. 2026-11-20 18:00:00+00'
        ) }}
    {%- endif -%}
    {{ timestamp_literal(value) }}
{%- endmacro %}

{#-
    as_of minus days and/or hours given by vars, e.g. {{ as_of_minus(hours=var('cooling_hours')) }}.
    A day is exactly 24 hours, whatever the session time zone (no daylight-saving shifts).
-#}
{% macro as_of_minus(days=0, hours=0) -%}
    ({{ as_of() }} - {{ hours_interval(days ~ ' * 24 + ' ~ hours) }})
{%- endmacro %}

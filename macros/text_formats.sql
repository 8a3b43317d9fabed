{#- A timestamptz as PostgreSQL renders it in UTC, e.g. 2026-11-20 17:59:59.123456+00; '' when NULL. -#}
{% macro utc_text(column) -%}
    {{ return(adapter.dispatch('utc_text')(column)) }}
{%- endmacro %}
{% macro default__utc_text(column) -%}
    coalesce(cast(({{ column }} at time zone 'UTC') as text) || '+00', '')
{%- endmacro %}
{#- Spark renders a timestamp in the session time zone (UTC in the profile), trailing zeros of the
    fraction dropped as PostgreSQL does. -#}
{% macro spark__utc_text(column) -%}
    coalesce(cast({{ column }} as string) || '+00', '')
{%- endmacro %}

{#- English ordinal label of a positive integer: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st... -#}
{% macro ordinal(number) -%}
    {{ number }} || case
        when {{ number }} % 100 between 11 and 13 then 'th'
        when {{ number }} % 10 = 1 then 'st'
        when {{ number }} % 10 = 2 then 'nd'
        when {{ number }} % 10 = 3 then 'rd'
        else 'th'
    end
{%- endmacro %}

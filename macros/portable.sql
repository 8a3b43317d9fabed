{#-
    The SQL that differs between warehouses, one macro per construct (adapter.dispatch): the PostgreSQL
    implementation renders exactly the SQL the models were tuned with (bench/README.md); the Spark one
    the equivalent Spark SQL (make test-spark proves both give the same rows). A model that needs a new
    PostgreSQL-only construct adds a macro here rather than writing it inline.
-#}

{#- A timestamp literal with its offset, e.g. '2026-11-20 18:00:00+00', as an instant. -#}
{% macro timestamp_literal(value) -%}
    {{ return(adapter.dispatch('timestamp_literal')(value)) }}
{%- endmacro %}
{% macro default__timestamp_literal(value) -%}
    cast('{{ value }}' as timestamptz)
{%- endmacro %}
{% macro spark__timestamp_literal(value) -%}
    cast('{{ value }}' as timestamp)
{%- endmacro %}

{#- A duration of whole hours (an expression), e.g. hours_interval('14 * 24 + 12'). -#}
{% macro hours_interval(hours) -%}
    {{ return(adapter.dispatch('hours_interval')(hours)) }}
{%- endmacro %}
{% macro default__hours_interval(hours) -%}
    make_interval(hours => {{ hours }})
{%- endmacro %}
{% macro spark__hours_interval(hours) -%}
    make_dt_interval(0, {{ hours }}, 0, 0)
{%- endmacro %}

{#- A constant duration of whole hours, as a literal: interval_literal_hours(48). -#}
{% macro interval_literal_hours(hours) -%}
    {{ return(adapter.dispatch('interval_literal_hours')(hours)) }}
{%- endmacro %}
{% macro default__interval_literal_hours(hours) -%}
    interval '{{ hours }} hours'
{%- endmacro %}
{% macro spark__interval_literal_hours(hours) -%}
    make_dt_interval(0, {{ hours }}, 0, 0)
{%- endmacro %}

{#- The seconds of a duration (timestamp - timestamp), as an exact decimal number. -#}
{% macro interval_seconds(duration) -%}
    {{ return(adapter.dispatch('interval_seconds')(duration)) }}
{%- endmacro %}
{% macro default__interval_seconds(duration) -%}
    extract(epoch from {{ duration }})
{%- endmacro %}
{% macro spark__interval_seconds(duration) -%}
    cast({{ duration }} as decimal(20, 6))
{%- endmacro %}

{#- A number as text with one decimal, rounded half away from zero: 12.35 -> '12.4', 0.04 -> '0.0'.
    pg_format: PostgreSQL's to_char format (its 9s bound the digits). -#}
{% macro one_decimal_text(number, pg_format='FM999999990.0') -%}
    {{ return(adapter.dispatch('one_decimal_text')(number, pg_format)) }}
{%- endmacro %}
{% macro default__one_decimal_text(number, pg_format) -%}
    to_char({{ number }}, '{{ pg_format }}')
{%- endmacro %}
{% macro spark__one_decimal_text(number, pg_format) -%}
    cast(round(cast({{ number }} as decimal(30, 10)), 1) as string)
{%- endmacro %}

{#- A timestamp as text in UTC to the minute, e.g. '2026-11-20 17:59', with ' UTC' after it if with_utc.
    (On Spark: in the session time zone, which the profile pins to UTC.) -#}
{% macro utc_minute_text(column, with_utc=false) -%}
    {{ return(adapter.dispatch('utc_minute_text')(column, with_utc)) }}
{%- endmacro %}
{% macro default__utc_minute_text(column, with_utc) -%}
    to_char({{ column }} at time zone 'UTC', 'YYYY-MM-DD HH24:MI{{ " \"UTC\"" if with_utc }}')
{%- endmacro %}
{% macro spark__utc_minute_text(column, with_utc) -%}
    date_format({{ column }}, 'yyyy-MM-dd HH:mm'){{ " || ' UTC'" if with_utc }}
{%- endmacro %}

{#- The text value of a top-level key of a JSON column (PostgreSQL jsonb, a JSON string on Spark). -#}
{% macro json_text(column, key) -%}
    {{ return(adapter.dispatch('json_text')(column, key)) }}
{%- endmacro %}
{% macro default__json_text(column, key) -%}
    {{ column }} ->> '{{ key }}'
{%- endmacro %}
{% macro spark__json_text(column, key) -%}
    get_json_object({{ column }}, '$.{{ key }}')
{%- endmacro %}

{#- A text to order by in byte (code point) order, whatever the database collation. -#}
{% macro bytewise(column) -%}
    {{ return(adapter.dispatch('bytewise')(column)) }}
{%- endmacro %}
{% macro default__bytewise(column) -%}
    {{ column }} collate "C"
{%- endmacro %}
{% macro spark__bytewise(column) -%}
    {{ column }}
{%- endmacro %}

{#- string_agg in a given order. -#}
{% macro string_agg_ordered(expression, delimiter, order_by) -%}
    {{ return(adapter.dispatch('string_agg_ordered')(expression, delimiter, order_by)) }}
{%- endmacro %}
{% macro default__string_agg_ordered(expression, delimiter, order_by) -%}
    string_agg(
        {{ expression }},
        {{ delimiter }} order by {{ order_by }}
    )
{%- endmacro %}
{% macro spark__string_agg_ordered(expression, delimiter, order_by) -%}
    string_agg(
        {{ expression }},
        {{ delimiter }}
    ) within group (order by {{ order_by }})
{%- endmacro %}

{#- A CTE's materialization hint: `name as {{ cte_hint('materialized') }} (` (PostgreSQL; none elsewhere). -#}
{% macro cte_hint(hint) -%}
    {{ return(adapter.dispatch('cte_hint')(hint)) }}
{%- endmacro %}
{% macro default__cte_hint(hint) -%}
    {{ hint }}
{%- endmacro %}
{% macro spark__cte_hint(hint) -%}
{%- endmacro %}

{#- A planner setting for one model's transaction (pre_hook), e.g. planner_setting('enable_nestloop', 'off'). -#}
{% macro planner_setting(name, value) -%}
    {{ return(adapter.dispatch('planner_setting')(name, value)) }}
{%- endmacro %}
{% macro default__planner_setting(name, value) -%}
    set local {{ name }} = {{ value }}
{%- endmacro %}
{% macro spark__planner_setting(name, value) -%}
{%- endmacro %}

{#-
    Column types (contracts, seeds) are written with PostgreSQL's names (uuid, text, timestamptz ...);
    var data_types (dbt_project.yml) maps them per adapter. dbt checks a contract by casting NULL to each
    declared type (macro cast), so on Spark that cast goes through the map.
-#}
{% macro data_type(name) -%}
    {{ return(var('data_types').get(target.type, {}).get(name, name)) }}
{%- endmacro %}
{% macro spark__cast(field, type) -%}
    cast({{ field }} as {{ data_type(type) }})
{%- endmacro %}

{#-
    One row per partition_by value, the first by order_by: a query whose select list is `columns`
    (output name: expression) and whose from/where clauses are the call block's body:
        {% call first_row_per(partition_by='a.user_id', order_by='a.id asc', columns={'user_id': 'a.user_id'}) %}
        from a where ...
        {% endcall %}
    PostgreSQL: select distinct on (measured faster than row_number() at 1M users); elsewhere row_number().
-#}
{% macro first_row_per(partition_by, order_by, columns) -%}
    {{ return(adapter.dispatch('first_row_per')(partition_by, order_by, columns, caller())) }}
{%- endmacro %}
{% macro default__first_row_per(partition_by, order_by, columns, body) -%}
    select
        {%- for name, expression in columns.items() %}
        {{ name }}{{ ',' if not loop.last }}
        {%- endfor %}
    from (
        select
            {%- for name, expression in columns.items() %}
            {{ expression }} as {{ name }},
            {%- endfor %}
            row_number() over (partition by {{ partition_by }} order by {{ order_by }}) as first_row_rank
        {{ body }}
    ) as ranked
    where first_row_rank = 1
{%- endmacro %}
{% macro postgres__first_row_per(partition_by, order_by, columns, body) -%}
    select distinct on ({{ partition_by }})
        {%- for name, expression in columns.items() %}
        {{ expression }} as {{ name }}{{ ',' if not loop.last }}
        {%- endfor %}
    {{ body }}
    order by {{ partition_by }} asc, {{ order_by }}
{%- endmacro %}

{#- The whole numbers from low to high (both included), as a relation of one column: `{{ integer_series(2, 10) }} as numbers (n)`. -#}
{% macro integer_series(low, high) -%}
    {{ return(adapter.dispatch('integer_series')(low, high)) }}
{%- endmacro %}
{% macro default__integer_series(low, high) -%}
    generate_series({{ low }}, {{ high }})
{%- endmacro %}
{% macro spark__integer_series(low, high) -%}
    range({{ low }}, {{ high }} + 1)
{%- endmacro %}

{#-
    select `columns` from `from_relation`, with a boolean column per flag (name: (relation, condition)):
    whether `relation` has a row where the (correlated) condition holds.
    PostgreSQL: exists() in the select list, which a CASE reading the flags evaluates only when it needs
    it (measured 3x faster at 1M users than joins or lateral lookups). Spark: a lateral lookup of one row
    (its optimizer fails on exists() in a select list over unit-test inputs).
-#}
{% macro select_with_row_flags(columns, from_relation, flags) -%}
    {{ return(adapter.dispatch('select_with_row_flags')(columns, from_relation, flags)) }}
{%- endmacro %}
{% macro default__select_with_row_flags(columns, from_relation, flags) -%}
    select
        {%- for column in columns %}
        {{ column }},
        {%- endfor %}
        {%- for name, (relation, condition) in flags.items() %}
        exists(
            select 1 from {{ relation }}
            where {{ condition }}
        ) as {{ name }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ from_relation }}
{%- endmacro %}
{% macro spark__select_with_row_flags(columns, from_relation, flags) -%}
    select
        {%- for column in columns %}
        {{ column }},
        {%- endfor %}
        {%- for name, _ in flags.items() %}
        {{ name }}_row.found is not null as {{ name }}{{ ',' if not loop.last }}
        {%- endfor %}
    from {{ from_relation }}
    {%- for name, (relation, condition) in flags.items() %}
    left join lateral (
        select true as found from {{ relation }}
        where {{ condition }}
        limit 1
    ) as {{ name }}_row on true
    {%- endfor %}
{%- endmacro %}

{#-
    Names that come from vars or the environment and reach SQL.

    Column names (var device_tokens) go through quote_identifier: always quoted, embedded double
    quotes doubled, so any name works (userId, "my column") and none can end the identifier.

    Relation names (DBT_SCHEMA, var source_schema, var device_tokens.table) are quoted by dbt
    itself (quoting in dbt_project.yml), but dbt does not escape them: it writes them between
    double quotes, and into string literals in its own queries. check_relation_names refuses the
    characters that could end either (quotes, backslash, control characters) and names PostgreSQL
    would silently truncate; uppercase, spaces, hyphens and other characters are fine.
-#}

{% macro quote_identifier(name, what) -%}
    {%- if name is not string or name == '' -%}
        {{ exceptions.raise_compiler_error(what ~ ' must be a non-empty name, got ' ~ shown(name)) }}
    {%- endif -%}
    {{- adapter.dispatch('quoted_name')(name) -}}
{%- endmacro %}

{% macro default__quoted_name(name) -%}
    "{{ name | replace('"', '""') }}"
{%- endmacro %}

{#- Spark quotes names with backticks (a double-quoted name would be a string). -#}
{% macro spark__quoted_name(name) -%}
    `{{ name | replace('`', '``') }}`
{%- endmacro %}

{% macro check_relation_name(name, what) -%}
    {%- if name is not string
        or not modules.re.fullmatch('[^"\'\\\\\\x00-\\x1f\\x7f]{1,63}', name)
        or (name.encode('utf-8') | length) > 63 -%}
        {{ exceptions.raise_compiler_error(
            what ~ ' ' ~ shown(name) ~ ' is not a usable name: 1 to 63 bytes, without quotes,'
            ~ ' backslashes or control characters'
        ) }}
    {%- endif -%}
{%- endmacro %}

{#- A var's value in an error message (JSON; missing is null). -#}
{% macro shown(value) -%}
    {{ (value if value is defined else none) | tojson }}
{%- endmacro %}

{#- Every relation name that comes from a var or the environment; dbt calls this while parsing. -#}
{% macro check_relation_names() -%}
    {%- do check_relation_name(target.schema, 'DBT_SCHEMA (the target schema)') -%}
    {%- do check_relation_name(var('source_schema'), 'var source_schema') -%}
    {%- do check_relation_name(var('device_tokens')['table'], 'var device_tokens.table') -%}
{%- endmacro %}

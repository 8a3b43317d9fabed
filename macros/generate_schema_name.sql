{#-
    dbt's default (target schema, or target schema _ custom schema), after refusing unusable names
    from vars and the environment (macros/identifiers.sql). dbt calls this for every node while
    parsing, so a bad name stops every command before any SQL runs.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- do check_relation_names() -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ target.schema }}_{{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}

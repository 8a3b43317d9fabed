{#-
    Post-hook of every model (dbt_project.yml), for tables, which every run rebuilds from scratch:
    - ANALYZE it as soon as it is built, so that the models, tests and sender queries reading it are
      planned with its real size and value distribution instead of guesses. Not the decisions models:
      one row per user (sampling 1,000,000 rows costs 0.2 s each), read only by their tests and by
      `sender explain`, whose plans need no statistics.
    - Switch autovacuum off for it: it would analyze the table again and vacuum it (a 1M-row decisions
      table: 170 MB) in the background while the next models build, for nothing, since a rebuilt table
      is never updated. (PostgreSQL still vacuums it if transaction ids ever run out.)
    A view has nothing to analyze.
-#}
{% macro analyze_table() -%}
    {{ return(adapter.dispatch('analyze_table')()) }}
{%- endmacro %}
{#- Other warehouses: nothing (Spark has no planner statistics to refresh here). -#}
{% macro default__analyze_table() -%}
{%- endmacro %}
{% macro postgres__analyze_table() -%}
    {%- if config.get('materialized') == 'table' -%}
        alter table {{ this }} set (autovacuum_enabled = false)
        {%- if not this.identifier.endswith('_decisions') %};
        analyze {{ this }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

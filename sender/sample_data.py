"""Deterministic, realistic sample data for the contract's source tables (sender/sql/source_schema.sql).

Everything is generated in SQL, set-based, from md5 hashes of ``seed:kind:key``: the same
``users``, ``as_of`` and ``seed`` give identical table contents on any run (no random(), no
Python loops). Two kinds of rows are made:

* **Bulk users** (numbered ``EDGE_USERS + 1 .. users``): hashed attributes with realistic shares
  (blank bios, NULL first names, soft deletes, users without activity or tokens, several preferred
  sizes, references to missing variants, offers without items, ...). Sign-ups spread over 400 days,
  so a few percent fall in the Layer 5 window; items, wishlists and offers are dated evenly between
  the user's sign-up and ``as_of``, so a few percent of users act in the Layer 3 window and the last
  7 days hold the Layer 2 trending offers. Popularity is skewed: product 1 is the hottest, and
  within a product the sizes near 10.
* **Edge users** (numbered ``1 .. EDGE_USERS``, username ``edge_<tag>``): a handful placed on
  purpose so each case the contract names exists whatever the seed (see ``_EDGE_USERS``). Their
  offer_items ids start with ``0000000<n>`` so that "first item = lowest id" is item n=1.

Every timestamp is computed with the session time zone set to UTC.
"""

from __future__ import annotations

import csv
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import psycopg
from psycopg import sql

from sender.errors import UserError

DEFAULT_SCHEMA = "sample_source"  # never public by default: the PG* variables may point at production
PRODUCTS = 300  # a few hundred products; variants per product: 3..12
ORPHAN_PRODUCTS = 3  # products whose variants exist but which are not in `products`

FIRST_NAMES = [
    "Ava", "Liam", "Noah", "Emma", "Olivia", "Mateo", "Sofia", "Jackson", "Aiden", "Mia",
    "Lucas", "Amara", "Kai", "Zoë", "José", "Chloé", "D'Andre", "Mary-Kate", "Jamal", "Priya",
    "Wei", "Hiroshi", "Fatima", "Diego", "Malik", "Tyrone", "Aaliyah", "Ethan", "Isabella", "Marcus",
    "Jordan", "Taylor", "Devon", "Andre", "Camila", "Nia", "Omar", "Sam", "Riley", "Jayden",
]  # fmt: skip
BIOS = [
    "Sneakerhead since 2009", "Size 10.5 collector, always down to trade", "Jordans > everything",
    "Looking for grails 👟", "DM for trades", "Dunk addict", "Vintage only, no beaters",
    "NYC | trades only, no sales", "Just here to cop", "Retro runner enthusiast",
]  # fmt: skip
MODELS = [
    "Air Jordan 1 Retro High OG", "Air Jordan 4 Retro", "Air Jordan 3 Retro", "Air Jordan 11 Retro",
    "Air Jordan 5 Retro", "Air Jordan 6 Retro", "Air Jordan 12 Retro", "Air Jordan 1 Low",
    "Air Jordan 1 Mid", "Nike Dunk Low", "Nike Dunk High", "Nike SB Dunk Low", "Nike Air Force 1 Low",
    "Nike Air Max 1", "Nike Air Max 90", "Nike Air Max 95", "Nike Air Max 97", "Yeezy Boost 350 V2",
    "Yeezy Boost 700", "Yeezy Slide", "New Balance 550", "New Balance 990v6", "New Balance 2002R",
    "Adidas Samba OG", "Adidas Gazelle", "Asics Gel-Kayano 14", "Nike Kobe 6 Protro",
    "Nike Air Foamposite One", "Travis Scott x Air Jordan 1 Low", "Off-White x Nike Air Presto",
]  # fmt: skip
COLORWAYS = [
    "Bred Toe", "Chicago", "Panda", "Black Cat", "Military Black", "White Cement", "Fire Red", "Concord",
    "University Blue", "Royal", "Shadow", "Zebra", "Onyx", "Triple White", "Infrared", "Mocha",
    "Pine Green", "Court Purple", "Lost and Found", "Grinch", "Georgetown", "Sail", "Bone", "Cool Grey",
    "Varsity Red",
]  # fmt: skip
BRANDS = ["Jordan", "Nike", "Adidas", "New Balance", "Yeezy", "Asics"]

# Product names pair MODELS[a] with COLORWAYS[b]; the pairing below is one-to-one while
# p <= len(MODELS) * len(COLORWAYS) (11 is coprime with 25), so names are unique.
assert PRODUCTS + ORPHAN_PRODUCTS <= len(MODELS) * len(COLORWAYS) and len(COLORWAYS) == 25

# Helpers, created in pg_temp for this session. They are simple SQL expressions, which the planner
# inlines, so they cost no function calls.
_HELPERS = [
    # A uniform number in [0, 1) from the 32 bits at position `part` (0..3) of an md5 hex digest.
    """create or replace function pg_temp.unit(h text, part int) returns float8
       language sql immutable as
       $$ select ('x' || substr(h, 1 + 8 * part, 8))::bit(32)::bigint / 4294967296::float8 $$""",
    # How many child rows a user has, from the digest `h`: 0 for a `zeros` share, else 1..1+extra,
    # small counts favoured.
    """create or replace function pg_temp.how_many(h text, zeros float8, extra int) returns int
       language sql immutable as
       $$ select case when pg_temp.unit(h, 0) < zeros then 0
                      else 1 + floor(extra * power((pg_temp.unit(h, 0) - zeros) / (1 - zeros), 2))::int end $$""",
    # A variant of the catalog (ids in popularity order), picked with a skew towards the front.
    """create or replace function pg_temp.pick(variants uuid[], u float8) returns uuid
       language sql immutable as
       $$ select variants[1 + floor(cardinality(variants) * u * u)::int] $$""",
    # A time between `since` and `until`, evenly spread. (Stable, not immutable: timestamptz
    # arithmetic depends on the session time zone, and a mislabelled function would not be inlined.)
    """create or replace function pg_temp.some_time(since timestamptz, until timestamptz, u float8)
       returns timestamptz language sql stable as
       $$ select until - (until - since) * u $$""",
    """create or replace function pg_temp.epoch_ms(t timestamptz) returns bigint
       language sql stable as $$ select floor(extract(epoch from t) * 1000)::bigint $$""",
    # A size label: 4, 4.5, 5, ... for index 0, 1, 2, ...
    """create or replace function pg_temp.size(i int) returns text
       language sql immutable as $$ select trim_scale(4 + i * 0.5)::text $$""",
]

# --- catalog ----------------------------------------------------------------------------------------

# All variants, numbered k = 0.. by popularity: by product (product 1 first; the orphan products
# last), then by how close the size is to 10. Bulk rows pick a variant with k = floor(V * u^2):
# product 1 gets ~6% of the picks, the top 10 about 18%, the last product ~0.2%.
_CATALOG = """
create temp table sample_catalog on commit drop as
select (row_number() over (order by p, abs(first_size + s - 12), s) - 1)::int as k,  -- size index 12 = 10
       md5(%(seed)s || ':variant:' || p || ':' || s)::uuid as id,
       md5(%(seed)s || ':product:' || p)::uuid as product_id,
       case when s = n - 1 and p %% 10 = 0 then null  -- every 10th product: a variant without index_cache
            when s = n - 1 and p %% 10 = 5 then jsonb_build_object('womens_size', pg_temp.size(first_size + s))
            else jsonb_build_object('mens_size', pg_temp.size(first_size + s))
       end as index_cache
from generate_series(1, %(products)s::int + %(orphan_products)s::int) p
cross join lateral (select md5(%(seed)s || ':product-shape:' || p) as h) ph
cross join lateral (select 3 + floor(pg_temp.unit(h, 0) * 10)::int as n) shape
-- n consecutive sizes, roughly centred on 10 (size index 12)
cross join lateral (select 12 - n / 2 + floor(pg_temp.unit(h, 1) * 4)::int - 2 as first_size) sizes
cross join lateral generate_series(0, n - 1) s
"""

# Variants the edge users refer to by name.
_NAMED_VARIANTS = """
create temp table sample_named_variant on commit drop as
select 'hot' as kind, id from sample_catalog where k = 0               -- product 1, lots of demand
union all select 'hot2', id from sample_catalog where k = 1             -- another size of product 1
union all (select 'orphan', id from sample_catalog                     -- its product does not exist
           where product_id = md5(%(seed)s || ':product:' || (%(products)s::int + 1))::uuid order by k limit 1)
union all select 'ghost', md5(%(seed)s || ':ghost-variant:edge')::uuid  -- not in product_variants
"""

# Each statement computes its md5 digests once, in a subquery ending in `offset 0`: without that
# fence the planner would inline the subquery and recompute the digest for every number taken from it.
_BULK: list[tuple[str, str]] = [
    (
        "products",
        """
        insert into products (id, name)
        select md5(%(seed)s || ':product:' || p)::uuid,
               (%(models)s::text[])[1 + (p - 1) %% cardinality(%(models)s::text[])] || ' "'
               || (%(colorways)s::text[])[1 + (11 * ((p - 1) / cardinality(%(models)s::text[])) + 7 * (p - 1)) %% 25]
               || '"'
        from generate_series(1, %(products)s::int) p
        """,
    ),
    (
        "product_variants",
        "insert into product_variants select id, product_id, index_cache from sample_catalog",
    ),
    (
        "attributes",
        """
        insert into attributes (id, name)
        select md5(%(seed)s || ':attribute:' || name)::uuid, name
        from unnest(array['mens_size', 'womens_size', 'favorite_brand']) name
        """,
    ),
    (
        "attribute_values",
        """
        insert into attribute_values (id, attribute_id, value)
        select md5(%(seed)s || ':attribute_value:' || attribute || ':' || value)::uuid,
               md5(%(seed)s || ':attribute:' || attribute)::uuid, value
        from (select 'mens_size' as attribute, pg_temp.size(i) as value from generate_series(0, 22) i  -- 4..15
              union all
              select 'womens_size', pg_temp.size(i) from generate_series(2, 18) i  -- 5..13
              union all
              select 'favorite_brand', unnest(%(brands)s::text[])) v
        """,
    ),
    (
        "users",
        """
        insert into users (id, username, first_name, bio, created_at, deleted_at)
        select id,
               case when pg_temp.unit(a, 0) < 0.005 then null
                    else lower(regexp_replace(name, '[^A-Za-z]', '', 'g')) || i end,
               case when pg_temp.unit(a, 1) < 0.01 then null else name end,
               case when pg_temp.unit(a, 2) < 0.20 then null  -- blank bios: NULL, empty, whitespace
                    when pg_temp.unit(a, 2) < 0.23 then ''
                    when pg_temp.unit(a, 2) < 0.25 then '   '
                    else (%(bios)s::text[])[1 + floor(pg_temp.unit(b, 0) * cardinality(%(bios)s::text[]))::int]
               end,
               created_at,
               case when pg_temp.unit(b, 1) < 0.02  -- soft-deleted: epoch millis of a time after sign-up
                    then pg_temp.epoch_ms(pg_temp.some_time(created_at, %(as_of)s, pg_temp.unit(b, 2)))
                    else 0 end
        from (select i, md5(%(seed)s || ':user:' || i)::uuid as id,
                     md5(%(seed)s || ':user-a:' || i) as a, md5(%(seed)s || ':user-b:' || i) as b
              from generate_series(%(first_bulk_user)s::int, %(users)s::int) i offset 0) h
        cross join lateral (
            select (%(first_names)s::text[])[1 + floor(pg_temp.unit(a, 3)
                                                 * cardinality(%(first_names)s::text[]))::int] as name,
                   -- sign-ups spread evenly over 400 days: ~3.4%% inside the 14-day Layer 5 window
                   %(as_of)s - interval '1 second' * (pg_temp.unit(b, 3) * 400 * 86400) as created_at
        ) v
        """,
    ),
    (
        "user_activities",
        """
        insert into user_activities (user_id, last_active)
        select id,
               case when pg_temp.unit(h, 1) < 0.03 then null
                    -- three in four were active in the last 30 days (or since sign-up if newer)
                    when pg_temp.unit(h, 2) < 0.75
                    then %(as_of)s - least(%(as_of)s - created_at, interval '30 days') * pg_temp.unit(h, 3)
                    else %(as_of)s - (%(as_of)s - created_at) * pg_temp.unit(h, 3) end
        from (select id, created_at, md5(%(seed)s || ':activity:' || id) as h from users offset 0) u
        where pg_temp.unit(h, 0) >= 0.05  -- 5%% of users have no row
        """,
    ),
    (
        "user_preferences",
        """
        insert into user_preferences (id, user_id)
        select md5(%(seed)s || ':user_preference:' || u.id || ':' || j)::uuid, u.id
        from users u
        cross join lateral generate_series(
            1, pg_temp.how_many(md5(%(seed)s || ':user_preferences:' || u.id), 0.4, 1)) j
        """,
    ),
    (
        "attribute_preferences",
        # One branch per kind of preference a set can hold, each with its own digest. (A lateral
        # VALUES list would be simpler to read but re-initialises its expressions for every row.)
        """
        insert into attribute_preferences (id, user_preference_id, attribute_id, attribute_value_id, preferred)
        select md5(%(seed)s || ':attribute_preference:' || id || ':' || slot)::uuid, id,
               md5(%(seed)s || ':attribute:' || attribute)::uuid,
               md5(%(seed)s || ':attribute_value:' || attribute || ':' || value)::uuid,
               preferred
        from (
            -- the size: mostly one preferred mens_size around 9.5-10, a few not preferred
            select 1 as slot, id, 'mens_size' as attribute, pg_temp.unit(h, 0) < 0.9 as present,
                   pg_temp.size(floor((pg_temp.unit(h, 1) + pg_temp.unit(h, 2)) / 2 * 23)::int) as value,
                   pg_temp.unit(h, 3) < 0.95 as preferred
            from (select id, md5(%(seed)s || ':preference-1:' || id) as h from user_preferences offset 0) p
            union all
            -- a second mens_size for 6%%, half of them preferred too (several preferred sizes)
            select 2, id, 'mens_size', pg_temp.unit(h, 0) < 0.06,
                   pg_temp.size(floor(pg_temp.unit(h, 1) * 23)::int), pg_temp.unit(h, 2) < 0.5
            from (select id, md5(%(seed)s || ':preference-2:' || id) as h from user_preferences offset 0) p
            union all
            select 3, id, 'womens_size', pg_temp.unit(h, 0) < 0.1,
                   pg_temp.size(2 + floor(pg_temp.unit(h, 1) * 17)::int), true
            from (select id, md5(%(seed)s || ':preference-3:' || id) as h from user_preferences offset 0) p
            union all
            select 4, id, 'favorite_brand', pg_temp.unit(h, 0) < 0.2,
                   (%(brands)s::text[])[1 + floor(pg_temp.unit(h, 1) * cardinality(%(brands)s::text[]))::int], true
            from (select id, md5(%(seed)s || ':preference-4:' || id) as h from user_preferences offset 0) p
        ) slots
        where present
        """,
    ),
    (
        "inventory_items",
        """
        insert into inventory_items (id, user_id, product_variant_id, status, created_at)
        select g.id, user_id,
               -- 1%% point at a variant that does not exist
               case when pg_temp.unit(h, 1) < 0.01 then md5(h)::uuid
                    else pg_temp.pick(c.variants, pg_temp.unit(h, 0)) end,
               case when pg_temp.unit(h, 2) < 0.6 then 'OPEN_FOR_TRADE'
                    when pg_temp.unit(h, 2) < 0.9 then 'NOT_FOR_TRADE' else 'SOLD' end,
               pg_temp.some_time(user_created_at, %(as_of)s, pg_temp.unit(h, 3))
        from (select md5(key)::uuid as id, u.id as user_id, u.created_at as user_created_at, md5('r:' || key) as h
              from users u
              cross join lateral generate_series(
                  1, pg_temp.how_many(md5(%(seed)s || ':inventory:' || u.id), 0.35, 12)) j
              cross join lateral (select %(seed)s || ':inventory_item:' || u.id || ':' || j as key) x
              offset 0) g
        cross join (select array_agg(id order by k) as variants from sample_catalog) c
        """,
    ),
    (
        "wishlist_items",
        """
        insert into wishlist_items (id, user_id, product_variant_id, created_at, deleted_at)
        select g.id, user_id,
               case when pg_temp.unit(h, 1) < 0.01 then md5(h)::uuid
                    else pg_temp.pick(c.variants, pg_temp.unit(h, 0)) end,
               created_at,
               case when pg_temp.unit(h, 2) < 0.08
                    then pg_temp.epoch_ms(pg_temp.some_time(created_at, %(as_of)s, pg_temp.unit(h, 2)))
                    else 0 end
        from (select id, user_id, h, pg_temp.some_time(user_created_at, %(as_of)s, pg_temp.unit(h, 3)) as created_at
              from (select md5(key)::uuid as id, u.id as user_id, u.created_at as user_created_at,
                           md5('r:' || key) as h
                    from users u
                    cross join lateral generate_series(
                        1, pg_temp.how_many(md5(%(seed)s || ':wishlist:' || u.id), 0.4, 10)) j
                    cross join lateral (select %(seed)s || ':wishlist_item:' || u.id || ':' || j as key) x
                    offset 0) y) g
        cross join (select array_agg(id order by k) as variants from sample_catalog) c
        """,
    ),
    (
        "offers",
        """
        insert into offers (id, creator_user_id, created_at)
        select md5(key)::uuid, user_id, pg_temp.some_time(user_created_at, %(as_of)s, pg_temp.unit(md5('r:' || key), 0))
        from (select u.id as user_id, u.created_at as user_created_at,
                     %(seed)s || ':offer:' || u.id || ':' || j as key
              from users u
              cross join lateral generate_series(
                  1, pg_temp.how_many(md5(%(seed)s || ':offers:' || u.id), 0.45, 8)) j) g
        """,
    ),
    (
        "offer_items",
        """
        insert into offer_items (id, offer_id, product_variant_id)
        select g.id, offer_id,
               case when pg_temp.unit(h, 1) < 0.01 then null  -- 1%% without a variant, 1%% a missing one
                    when pg_temp.unit(h, 1) < 0.02 then md5(h)::uuid
                    else pg_temp.pick(c.variants, pg_temp.unit(h, 0)) end
        from (select md5(key)::uuid as id, o.id as offer_id, md5('r:' || key) as h
              from offers o
              -- 3%% of offers have no items; most have one, some up to four
              cross join lateral generate_series(
                  1, pg_temp.how_many(md5(%(seed)s || ':offer_items:' || o.id), 0.03, 3)) j
              cross join lateral (select %(seed)s || ':offer_item:' || o.id || ':' || j as key) x
              offset 0) g
        cross join (select array_agg(id order by k) as variants from sample_catalog) c
        """,
    ),
    (
        "desired_items",
        """
        insert into desired_items (id, user_id, product_variant_id, offers_count, created_at, deleted_at)
        select g.id, user_id,
               case when pg_temp.unit(h, 1) < 0.01 then md5(h)::uuid
                    else pg_temp.pick(c.variants, pg_temp.unit(h, 0)) end,
               floor(15 * power(pg_temp.unit(h, 2), 3))::int,  -- mostly 0-2: ties are common
               created_at,
               case when pg_temp.unit(h2, 0) < 0.05
                    then pg_temp.epoch_ms(pg_temp.some_time(created_at, %(as_of)s, pg_temp.unit(h2, 1)))
                    else 0 end
        from (select id, user_id, h, h2, pg_temp.some_time(user_created_at, %(as_of)s, pg_temp.unit(h, 3)) as created_at
              from (select md5(key)::uuid as id, u.id as user_id, u.created_at as user_created_at,
                           md5('r:' || key) as h, md5('s:' || key) as h2
                    from users u
                    cross join lateral generate_series(
                        1, pg_temp.how_many(md5(%(seed)s || ':desired:' || u.id), 0.5, 6)) j
                    cross join lateral (select %(seed)s || ':desired_item:' || u.id || ':' || j as key) x
                    offset 0) y) g
        cross join (select array_agg(id order by k) as variants from sample_catalog) c
        """,
    ),
    (
        "device_tokens",
        """
        insert into device_tokens (id, user_id, token, platform, created_at, updated_at)
        select g.id, user_id,
               -- APNs tokens are 64 hex digits; FCM tokens look like '<43 chars>:APA91b<64 chars>'
               case when platform = 'ios' then h || md5(h)
                    else translate(encode(decode(md5(h || 'a') || md5(h || 'b'), 'hex'), 'base64'), '+/=', '-_')
                         || ':APA91b'
                         || translate(encode(decode(md5(h || 'c') || md5(h || 'd') || md5(h || 'e'), 'hex'),
                                             'base64'), '+/', '-_') end,
               platform, created_at,
               pg_temp.some_time(created_at, %(as_of)s, pg_temp.unit(h, 2))
        from (select id, user_id, h,
                     case when pg_temp.unit(h, 0) < 0.55 then 'ios'
                          when pg_temp.unit(h, 0) < 0.9 then 'android' else 'web' end as platform,
                     pg_temp.some_time(user_created_at, %(as_of)s, pg_temp.unit(h, 1)) as created_at
              from (select md5(key)::uuid as id, u.id as user_id, u.created_at as user_created_at,
                           md5('r:' || key) as h
                    from users u
                    cross join lateral generate_series(  -- 0..3 tokens, evenly
                        1, floor(4 * pg_temp.unit(md5(%(seed)s || ':device_tokens:' || u.id), 0))::int) j
                    cross join lateral (select %(seed)s || ':device_token:' || u.id || ':' || j as key) x
                    offset 0) y) g
        """,
    ),
]

# --- edge users -------------------------------------------------------------------------------------

# (n, tag, first_name, bio, sign-up age before as_of, deleted, activity: 'recent' | 'null' | 'none').
# Tags starting level1..level5 are in the Layer 5 window with exactly that level's condition.
_EDGE_USERS = """
create temp table sample_edge on commit drop as
select n, tag, md5(%(seed)s || ':user:' || n)::uuid as id, first_name, bio,
       %(as_of)s - age as created_at, deleted, activity
from (values
    (1, 'window_start', 'Ava', 'Collector', interval '14 days', false, 'recent'),  -- included, level 1
    (2, 'window_end', 'Ben', 'Collector', interval '12 hours', false, 'recent'),   -- included, level 1
    (3, 'before_window', 'Cam', 'Collector', interval '14 days 0.000001 seconds', false, 'recent'),
    (4, 'after_window', 'Dee', 'Collector', interval '11:59:59.999999', false, 'recent'),
    (5, 'level1_no_shoes', 'Eli', 'Collector', interval '5 days 01:00', false, 'recent'),  -- with offers etc.
    (6, 'level2_bio_null', 'Fay', null, interval '5 days 02:00', false, 'recent'),
    (7, 'level2_bio_empty', 'Gus', '', interval '5 days 03:00', false, 'recent'),
    (8, 'level2_bio_spaces', 'Hal', '   ', interval '5 days 04:00', false, 'recent'),
    (9, 'level3_no_offers', 'Ida', 'Collector', interval '5 days 05:00', false, 'recent'),  -- target: desired
    (10, 'level4_no_wishlist', 'Jon', 'Collector', interval '5 days 06:00', false, 'recent'),  -- target: offer
    (11, 'level5_new_star', 'Kim', 'Collector', interval '5 days 07:00', false, 'recent'),  -- target: wishlist
    (12, 'level5_ghost_target', 'Lou', 'Collector', interval '5 days 08:00', false, 'recent'),  -- missing variant
    (13, 'level5_orphan_target', 'Max', 'Collector', interval '5 days 09:00', false, 'recent'),  -- missing product
    (14, 'no_first_name', null, 'Collector', interval '5 days 10:00', false, 'recent'),
    (15, 'deleted', 'Ned', 'Collector', interval '5 days 11:00', true, 'recent'),
    (16, 'multi_size', 'Oli', 'Collector', interval '40 days', false, 'recent'),
    (17, 'no_activity', 'Pam', 'Collector', interval '60 days 01:00', false, 'none'),  -- no activity, no tokens
    (18, 'null_last_active', 'Quinn', 'Collector', interval '60 days 02:00', false, 'null'),
    (19, 'csv_quoting', 'Zoë "Z", Jr.', 'Collector', interval '60 days 03:00', false, 'recent'),
    (20, 'l3_window_start', 'Ray', 'Collector', interval '60 days 04:00', false, 'recent'),
    (21, 'l3_window_end', 'Sue', 'Collector', interval '60 days 05:00', false, 'recent'),
    (22, 'l3_priority', 'Tom', 'Collector', interval '60 days 06:00', false, 'recent'),
    (23, 'l3_first_item_ghost', 'Uma', 'Collector', interval '60 days 07:00', false, 'recent'),
    (24, 'trending_holder', 'Val', 'Collector', interval '90 days', false, 'recent')
) as v(n, tag, first_name, bio, age, deleted, activity)
"""
EDGE_USERS = 24

_EDGE: list[tuple[str, str]] = [
    (
        "users",
        """
        insert into users (id, username, first_name, bio, created_at, deleted_at)
        select id, 'edge_' || tag, first_name, bio, created_at,
               case when deleted then pg_temp.epoch_ms(%(as_of)s - interval '1 hour') else 0 end
        from sample_edge
        """,
    ),
    (
        "user_activities",
        """
        insert into user_activities (user_id, last_active)
        select id, case when activity = 'recent' then %(as_of)s - n * interval '61.234567 seconds' end
        from sample_edge where activity <> 'none'
        """,
    ),
    (
        "device_tokens",
        """
        insert into device_tokens (id, user_id, token, platform, created_at, updated_at)
        select md5(%(seed)s || ':edge-token:' || tag)::uuid, id,
               md5(%(seed)s || ':edge-token:' || tag) || md5(%(seed)s || ':edge-token2:' || tag),
               'ios', created_at, created_at
        from sample_edge where activity <> 'none'
        """,
    ),
    (
        "user_preferences",
        """
        insert into user_preferences (id, user_id)
        select distinct md5(%(seed)s || ':edge-preference:' || tag || ':' || pref)::uuid, e.id
        from sample_edge_preference p join sample_edge e using (tag)
        """,
    ),
    (
        "attribute_preferences",
        """
        insert into attribute_preferences (id, user_preference_id, attribute_id, attribute_value_id, preferred)
        select md5(%(seed)s || ':edge-attribute-preference:' || tag || ':' || pref || ':' || attribute
                   || ':' || value)::uuid,
               md5(%(seed)s || ':edge-preference:' || tag || ':' || pref)::uuid,
               md5(%(seed)s || ':attribute:' || attribute)::uuid,
               md5(%(seed)s || ':attribute_value:' || attribute || ':' || value)::uuid,
               preferred
        from sample_edge_preference
        """,
    ),
    (
        "inventory_items",
        """
        insert into inventory_items (id, user_id, product_variant_id, status, created_at)
        select md5(%(seed)s || ':edge-inventory:' || tag || ':' || kind || ':' || age)::uuid,
               e.id, nv.id, status, %(as_of)s - age::interval
        from (values
            ('level2_bio_null', 'hot', 'NOT_FOR_TRADE', '3 days'),  -- any status counts for Layer 5
            ('level2_bio_empty', 'hot', 'SOLD', '3 days'),
            ('level2_bio_spaces', 'hot', 'OPEN_FOR_TRADE', '3 days'),
            ('level3_no_offers', 'hot', 'OPEN_FOR_TRADE', '3 days'),
            ('level4_no_wishlist', 'hot2', 'OPEN_FOR_TRADE', '3 days'),
            ('level5_new_star', 'hot', 'OPEN_FOR_TRADE', '3 days'),
            ('level5_ghost_target', 'ghost', 'OPEN_FOR_TRADE', '3 days'),
            ('level5_orphan_target', 'orphan', 'OPEN_FOR_TRADE', '3 days'),
            ('deleted', 'hot', 'OPEN_FOR_TRADE', '24 hours'),  -- Layer 3 window, but not a live user
            ('multi_size', 'hot', 'OPEN_FOR_TRADE', '24 hours'),  -- closet_add
            ('null_last_active', 'hot', 'OPEN_FOR_TRADE', '20 hours'),  -- closet_add
            ('l3_priority', 'hot', 'OPEN_FOR_TRADE', '20 hours'),  -- loses to its offer
            ('trending_holder', 'hot', 'OPEN_FOR_TRADE', '30 days')
        ) as v(tag, kind, status, age)
        join sample_edge e using (tag) join sample_named_variant nv using (kind)
        """,
    ),
    (
        "wishlist_items",
        """
        insert into wishlist_items (id, user_id, product_variant_id, created_at, deleted_at)
        select md5(%(seed)s || ':edge-wishlist:' || tag || ':' || kind || ':' || age)::uuid,
               e.id, nv.id, %(as_of)s - age::interval,
               case when soft_deleted then pg_temp.epoch_ms(%(as_of)s - interval '1 hour') else 0 end
        from (values
            ('level1_no_shoes', 'hot', '4 days', false),
            ('level3_no_offers', 'hot2', '2 days', false),
            ('level4_no_wishlist', 'hot', '2 days', true),  -- soft-deleted: no live wishlist
            ('level5_new_star', 'hot', '2 days', false),
            ('level5_ghost_target', 'ghost', '2 days', false),
            ('level5_orphan_target', 'orphan', '2 days', false),
            ('no_activity', 'hot', '24 hours', false),  -- wishlist_add with an empty lastActive
            ('l3_window_start', 'hot', '36 hours', false),  -- exactly the window start: included
            ('l3_window_end', 'hot', '12 hours', false),  -- exactly the window end: excluded
            ('l3_priority', 'hot', '30 hours', false),
            ('l3_first_item_ghost', 'hot', '30 hours', false)  -- kept: its offer is not an activity
        ) as v(tag, kind, age, soft_deleted)
        join sample_edge e using (tag) join sample_named_variant nv using (kind)
        """,
    ),
    (
        "desired_items",
        """
        insert into desired_items (id, user_id, product_variant_id, offers_count, created_at, deleted_at)
        select md5(%(seed)s || ':edge-desired:' || tag || ':' || kind || ':' || age)::uuid,
               e.id, nv.id, offers_count, %(as_of)s - age::interval,
               case when soft_deleted then pg_temp.epoch_ms(%(as_of)s - interval '1 hour') else 0 end
        from (values
            ('level1_no_shoes', 'hot', '4 days', 2, false),
            ('level3_no_offers', 'hot', '3 days', 5, false),
            ('level3_no_offers', 'hot2', '2 days', 5, false),  -- tie on offers_count: newest wins
            ('level3_no_offers', 'hot', '1 day', 9, true),  -- soft-deleted: ignored
            ('level4_no_wishlist', 'hot', '2 days', 1, true),
            ('level5_ghost_target', 'ghost', '2 days', 3, false)
        ) as v(tag, kind, age, offers_count, soft_deleted)
        join sample_edge e using (tag) join sample_named_variant nv using (kind)
        """,
    ),
    (
        "offers",
        """
        insert into offers (id, creator_user_id, created_at)
        select md5(%(seed)s || ':edge-offer:' || tag || ':' || offer)::uuid, e.id, %(as_of)s - age
        from sample_edge_offer join sample_edge e using (tag)
        """,
    ),
    (
        "offer_items",
        """
        insert into offer_items (id, offer_id, product_variant_id)
        -- ids start with the item's position, so the first item listed has the lowest id
        select (lpad(pos::text, 8, '0')
                || substr(md5(%(seed)s || ':edge-offer-item:' || tag || ':' || offer || ':' || pos), 9))::uuid,
               md5(%(seed)s || ':edge-offer:' || tag || ':' || offer)::uuid, nv.id
        from sample_edge_offer
        cross join lateral unnest(items) with ordinality as i(kind, pos)
        left join sample_named_variant nv using (kind)  -- kind NULL: an item without a variant
        """,
    ),
]

# Offers of the edge users and their items, in id order (a NULL item has no product_variant_id).
_EDGE_OFFERS = """
create temp table sample_edge_offer on commit drop as
select tag, offer, age, items from (values
    ('level1_no_shoes', 1, interval '4 days', array['hot']),
    ('level4_no_wishlist', 1, interval '3 days', array['hot2', 'hot']),  -- multi-item: first is hot2
    ('level4_no_wishlist', 2, interval '5 days', array['hot']),  -- older
    ('level5_new_star', 1, interval '2 days', array[]::text[]),  -- an offer without items
    ('level5_ghost_target', 1, interval '2 days', array[null, 'ghost']),
    ('level5_orphan_target', 1, interval '2 days', array['orphan']),
    ('deleted', 1, interval '24 hours', array['hot']),
    ('csv_quoting', 1, interval '24 hours', array['hot']),  -- offer_created
    ('l3_priority', 1, interval '25 hours', array['hot2', 'hot']),  -- offer_created wins
    ('l3_first_item_ghost', 1, interval '20 hours', array['ghost', 'hot']),  -- first item missing
    ('trending_holder', 1, interval '7 days', array['hot']),  -- exactly the trending window start
    ('trending_holder', 2, interval '0 seconds', array['hot'])  -- exactly as_of: outside the window
) as v(tag, offer, age, items)
"""

# (tag, preference set, attribute, value, preferred)
_EDGE_PREFERENCES = """
create temp table sample_edge_preference on commit drop as
select * from (values
    ('multi_size', 1, 'mens_size', '10', true),
    ('multi_size', 1, 'mens_size', '9.5', true),  -- several preferred mens sizes
    ('multi_size', 1, 'mens_size', '12', false),  -- not preferred
    ('multi_size', 1, 'womens_size', '11.5', true),  -- preferred, but not mens_size
    ('multi_size', 1, 'favorite_brand', 'Jordan', true),
    ('multi_size', 2, 'mens_size', '10.5', true),  -- a second preference set
    ('l3_priority', 1, 'mens_size', '9', true)
) as v(tag, pref, attribute, value, preferred)
"""

# What `drop table ... cascade` of the schema's `tables` would drop in other schemas, as (kind, name):
# everything that depends on them, recursively (a view through its rewrite rule).
_DEPENDENTS = """
with recursive dropped(classid, objid) as (
    select 'pg_class'::regclass::oid, c.oid
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = %(schema)s and c.relname = any(%(tables)s)
  union
    select x.classid, x.objid
    from dropped d
    cross join lateral (
        select dep.classid, dep.objid from pg_depend dep  -- what depends on d
        where dep.refclassid = d.classid and dep.refobjid = d.objid and dep.deptype in ('n', 'a', 'i')
        union all
        select dep.refclassid, dep.refobjid from pg_depend dep  -- what d is part of (a rule: its view)
        where dep.classid = d.classid and dep.objid = d.objid and dep.deptype = 'i'
    ) x
)
select o.type, o.identity
from dropped d cross join lateral pg_identify_object(d.classid, d.objid, 0) o
where o.schema not in (%(schema)s, 'pg_toast') and o.type not in ('type', 'index')
order by o.identity
"""

_TEMP_TABLES = ("sample_catalog", "sample_named_variant", "sample_edge", "sample_edge_offer", "sample_edge_preference")


def contract_statements() -> tuple[list[str], list[str]]:
    """The contract's DDL split into (create table statements, create index statements)."""
    text = (files("sender") / "sql" / "source_schema.sql").read_text()
    text = re.sub(r"--[^\n]*", "", text)  # comments contain ';'
    statements = [s.strip() for s in text.split(";") if s.strip()]
    indexes = [s for s in statements if s.lower().startswith("create index")]
    return [s for s in statements if s not in indexes], indexes


def contract_tables() -> list[str]:
    creates, _ = contract_statements()
    return [re.match(r"create table (\w+)", s, re.IGNORECASE).group(1) for s in creates]


def generate(
    conn: psycopg.Connection,
    *,
    users: int,
    as_of: datetime,
    seed: int = 42,
    schema: str = DEFAULT_SCHEMA,
    replace: bool = False,
    cascade: bool = False,
    allow_public: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Create the contract's tables in ``schema`` and fill them for ``users`` users; return row counts.

    Runs in one transaction (committed at the end). A naive ``as_of`` is taken as UTC. With
    ``replace`` existing contract tables are dropped first, with what depends on them in ``schema``;
    if objects in other schemas depend on them (e.g. dbt's views, which the next ``dbt build``
    recreates) it refuses, naming them, unless ``cascade`` is given. ``public`` needs ``allow_public``.
    """
    check_schema(schema, allow_public)
    if users < EDGE_USERS:
        raise UserError(f"--users must be at least {EDGE_USERS} (the users placed for edge cases)")
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    say = progress or (lambda message: None)
    params = {
        "seed": str(seed),
        "as_of": as_of,
        "users": users,
        "first_bulk_user": EDGE_USERS + 1,
        "products": PRODUCTS,
        "orphan_products": ORPHAN_PRODUCTS,
        "first_names": FIRST_NAMES,
        "bios": BIOS,
        "models": MODELS,
        "colorways": COLORWAYS,
        "brands": BRANDS,
    }
    with conn.transaction():
        conn.execute("set local time zone 'UTC'")
        conn.execute("set local maintenance_work_mem = '512MB'")
        constraints = _create_tables(conn, schema, replace, cascade, say)
        counts = _fill(conn, params, say)
        _index(conn, schema, constraints, say)
    return counts


def check_schema(schema: str, allow_public: bool = False) -> None:
    """Refuse schema names PostgreSQL reserves or truncates, and ``public`` unless allowed."""
    if not schema.strip():
        raise UserError("--schema is empty")
    if schema.lower().startswith("pg_") or schema.lower() == "information_schema":
        raise UserError(f"--schema {schema!r}: PostgreSQL reserves that name for its own schemas; choose another")
    if len(schema.encode()) > 63:
        raise UserError(f"--schema {schema!r} is longer than PostgreSQL's 63-byte limit for names")
    if schema == "public" and not allow_public:
        raise UserError(
            "--schema public: refusing to write sample data into public (the application's tables usually live"
            " there); pass --allow-public if that is what you want"
        )


def _create_tables(
    conn: psycopg.Connection, schema: str, replace: bool, cascade: bool, say: Callable[[str], None]
) -> list[tuple[str, str, str]]:
    """Create the schema and the contract's tables without their primary keys and unique constraints.

    Returns those constraints as (table, name, definition), to add back once the tables are filled:
    building an index once is faster than growing it row by row.
    """
    creates, _ = contract_statements()
    tables = contract_tables()
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
    existing = [
        row[0]
        for row in conn.execute(
            "select table_name from information_schema.tables"
            " where table_schema = %s and table_name = any(%s) order by table_name",
            (schema, tables),
        )
    ]
    if existing and not replace:
        raise UserError(
            f"schema {schema!r} already has {len(existing)} of the source tables ({', '.join(existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}); pass --replace to drop and regenerate them"
        )
    if existing:
        names = sql.SQL(", ").join(sql.Identifier(schema, name) for name in existing)
        conn.execute(sql.SQL("lock table {} in access exclusive mode").format(names))  # no new dependents
        outside = [f"{kind} {name}" for kind, name in conn.execute(_DEPENDENTS, {"schema": schema, "tables": existing})]
        if outside and not cascade:
            shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
            raise UserError(
                f"--replace would also drop {len(outside)} objects outside schema {schema!r} built on its tables"
                f" ({shown}); pass --cascade to drop them too (dbt build recreates dbt's views)"
            )
        say(f"dropping {len(existing)} existing tables in schema {schema}")
        if outside:
            say(f"--cascade: also dropping {len(outside)} objects outside schema {schema}: {', '.join(outside)}")
        conn.execute(sql.SQL("drop table {} cascade").format(names))
    conn.execute(sql.SQL("set local search_path to {}").format(sql.Identifier(schema)))
    for statement in creates:
        conn.execute(statement)
    constraints = conn.execute(
        """
        select c.relname, con.conname, pg_get_constraintdef(con.oid)
        from pg_constraint con
        join pg_class c on c.oid = con.conrelid
        join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = %s and c.relname = any(%s) and con.contype in ('p', 'u')
        order by 1, 2
        """,
        (schema, tables),
    ).fetchall()
    for table, name, _ in constraints:
        conn.execute(
            sql.SQL("alter table {} drop constraint {}").format(sql.Identifier(schema, table), sql.Identifier(name))
        )
    return constraints


def _fill(conn: psycopg.Connection, params: dict, say: Callable[[str], None]) -> dict[str, int]:
    """Insert the bulk rows, then the edge users' rows (the tables are on the search_path)."""
    counts = dict.fromkeys(contract_tables(), 0)
    for helper in _HELPERS:
        conn.execute(helper)
    conn.execute(_CATALOG, params)
    conn.execute(_NAMED_VARIANTS, params)
    for table, statement in _BULK:
        counts[table] += conn.execute(statement, params).rowcount
        say(f"{table}: {counts[table]:,} rows")

    for statement in (_EDGE_USERS, _EDGE_OFFERS, _EDGE_PREFERENCES):
        conn.execute(statement, params)
    for table, statement in _EDGE:
        counts[table] += conn.execute(statement, params).rowcount
    say(f"edge cases: {EDGE_USERS} users placed on purpose (username edge_*)")
    for temp in _TEMP_TABLES:  # dropped at commit anyway; now, in case the caller's transaction goes on
        conn.execute(sql.SQL("drop table {}").format(sql.Identifier("pg_temp", temp)))
    return counts


def _index(
    conn: psycopg.Connection, schema: str, constraints: list[tuple[str, str, str]], say: Callable[[str], None]
) -> None:
    """Add back the constraints, create the contract's indexes and analyze the tables."""
    _, indexes = contract_statements()
    say(f"indexes: {len(constraints)} constraints, {len(indexes)} indexes")
    for table, name, definition in constraints:
        conn.execute(
            sql.SQL("alter table {} add constraint {} {}").format(
                sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
            )
        )
    for statement in indexes:
        conn.execute(statement)
    say("analyze")
    for table in contract_tables():
        conn.execute(sql.SQL("analyze {}").format(sql.Identifier(schema, table)))


def add_test_users(conn: psycopg.Connection, *, path: Path, schema: str, as_of: datetime) -> int:
    """Make the test users of a test_users seed file app users with one device token each.

    So that test sends reach someone in the demo and tests. Each becomes a long-standing, active
    user (outside the Layer 5 window); existing rows are left alone. Returns how many were read.
    """
    rows = read_test_users(path)
    with conn.transaction():
        conn.execute(sql.SQL("set local search_path to {}").format(sql.Identifier(schema)))
        for row in rows:
            params = {**row, "as_of": as_of}
            conn.execute(
                "insert into users (id, username, first_name, bio, created_at)"
                " values (%(user_id)s, %(username)s, %(firstName)s, 'QA test account',"
                " %(as_of)s - interval '400 days') on conflict do nothing",
                params,
            )
            conn.execute(
                "insert into user_activities (user_id, last_active) values (%(user_id)s, %(as_of)s)"
                " on conflict do nothing",
                params,
            )
            conn.execute(
                "insert into device_tokens (id, user_id, token, platform, created_at, updated_at)"
                " values (md5('test-token:' || %(user_id)s)::uuid, %(user_id)s::uuid, 'test-device-' || %(user_id)s,"
                " 'ios', %(as_of)s, %(as_of)s) on conflict do nothing",
                params,
            )
    return len(rows)


def read_test_users(path: Path) -> list[dict[str, str]]:
    """Rows of a test_users CSV (user_id, username, firstName); UserError naming the file and line."""
    required = ("user_id", "username", "firstName")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} in the header")
            rows = []
            for row in reader:
                try:
                    row["user_id"] = str(uuid.UUID(row["user_id"] or ""))
                except ValueError:
                    raise UserError(f"{path}:{reader.line_num}: user_id {row['user_id']!r} is not a UUID") from None
                rows.append(row)
    except OSError as exc:
        raise UserError(f"cannot read test users from {path}: {exc.strerror}") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV file: {exc}") from exc
    return rows

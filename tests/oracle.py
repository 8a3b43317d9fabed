"""An independent oracle for the audience files: /work/shared/contract/AUDIENCES.md in plain Python.

Given the raw source tables (each fetched with a bare ``select *``: no joins, filters or ranking in
SQL) and an ``as_of``, it computes the exact rows every *production* CSV file should hold, as lists
of strings in file order, with the contract's default vars.

Rules the contract leaves to the project, as documented by the project:

* ``usersize``: among several preferred ``mens_size`` rows, the one with the lowest
  ``attribute_preferences.id``.
* Row order. Layer 5: newest sign-up first, then ``user_id``. Layer 3: most recent activity first,
  then ``user_id``. Layer 2: trending rank, then ``wishlist_count`` descending, then ``user_id``.
* Remaining ties are broken by the lowest id. Layer 3: priority, newest ``created_at``, lowest
  variant id, then lowest activity id (inventory item / wishlist item / offer id). Layer 2 match:
  rank, demand descending, newest inventory item ``created_at``, lowest variant id, then lowest
  inventory item id.
* UUIDs compare as PostgreSQL does (byte order, which is how ``uuid.UUID`` objects compare) and
  text (product names) in code-point order, which is PostgreSQL's order under the C collation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from tests.contract import L2, L3, L5_LONG, L5_SHORT

TABLES = [
    "users",
    "user_activities",
    "attributes",
    "attribute_values",
    "user_preferences",
    "attribute_preferences",
    "products",
    "product_variants",
    "inventory_items",
    "wishlist_items",
    "offers",
    "offer_items",
    "desired_items",
]

# The contract's default vars (AUDIENCES.md).
DEFAULT_VARS = {
    "new_user_max_age_days": 14,
    "new_user_min_age_hours": 12,
    "lookback_hours": 48,
    "cooling_hours": 12,
    "min_inventory_count": 3,
    "min_wishlist_count": 2,
    "trending_lookback_days": 7,
    "trending_top_n": 10,
    "activity_days": 30,
    "min_demand": 2,
}


# Layer 5 levels in extraction order: (level number, file prefix, header).
L5_LEVELS = [
    (1, "no-shoes-new-user", L5_SHORT),
    (2, "no-bio-new-user", L5_SHORT),
    (3, "no-offers-new-user", L5_LONG),
    (4, "no-wishlist-new-user", L5_LONG),
    (5, "new-stars-new-user", L5_LONG),
]
# Layer 3 activities, highest priority first: (activity, file prefix, header).
L3_ACTIVITIES = [
    ("offer_created", "recent-offer-creators", L3 + ["inventory_count"]),
    ("closet_add", "recent-closet-adders", L3 + ["wishlist_count"]),
    ("wishlist_add", "recent-wishlist-adders", L3 + ["inventory_count"]),
]
L2_FILES = [("trending-closet-top1", L2), ("trending-closet-top2-10", L2)]

OPEN = "OPEN_FOR_TRADE"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- rendering helpers


def micros(ts: datetime) -> int:
    """A timestamptz as integer microseconds since the epoch (exact, for sorting)."""
    return (ts - EPOCH) // timedelta(microseconds=1)


def pg_timestamptz_text(ts: datetime | None) -> str:
    """``ts::text`` in a UTC session: '2026-11-20 17:59:59.1234+00' (fraction without trailing zeros)."""
    if ts is None:
        return ""
    ts = ts.astimezone(UTC)
    text = f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d} {ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}"
    if ts.microsecond:
        text += "." + f"{ts.microsecond:06d}".rstrip("0")
    return text + "+00"


def text(value: Any) -> str:
    """A value as the CSV shows it: missing -> '', integers as plain digits, uuids lowercase."""
    return "" if value is None else str(value)


def ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def pg_trim(value: str) -> str:
    """PostgreSQL's TRIM(text): strips spaces only (not tabs or newlines)."""
    return value.strip(" ")


def json_text(value: Any) -> str | None:
    """``jsonb ->> key`` for a value psycopg has decoded."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def first(rows: Iterable[dict], key: Callable[[dict], Any]) -> dict | None:
    """The first row of an ordering (``order by ... limit 1``), or None."""
    rows = sorted(rows, key=key)
    return rows[0] if rows else None


# --------------------------------------------------------------------------- the source


def load_source(conn, schema: str) -> dict[str, list[dict]]:
    """Every source table, verbatim (``select *``), as lists of dicts."""
    source = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for table in TABLES:
            cur.execute(sql.SQL("select * from {}").format(sql.Identifier(schema, table)))
            source[table] = cur.fetchall()
    return source


@dataclass
class Source:
    """The source tables indexed for look-ups (still no logic beyond grouping by a key)."""

    tables: dict[str, list[dict]]

    def __post_init__(self) -> None:
        t = self.tables
        self.users = {u["id"]: u for u in t["users"]}
        self.last_active = {a["user_id"]: a["last_active"] for a in t["user_activities"]}
        self.products = {p["id"]: p for p in t["products"]}
        self.variants = {v["id"]: v for v in t["product_variants"]}
        self.offers = {o["id"]: o for o in t["offers"]}
        self.items_of_offer = group(t["offer_items"], "offer_id")
        self.offers_of_user = group(t["offers"], "creator_user_id")
        self.inventory_of_user = group(t["inventory_items"], "user_id")
        self.wishlist_of_user = group(t["wishlist_items"], "user_id")
        self.desired_of_user = group(t["desired_items"], "user_id")
        self.usersize = self._usersizes()
        self._demand_counts()

    # ---- predicates

    def live_user(self, user_id) -> bool:
        user = self.users.get(user_id)
        return user is not None and user["deleted_at"] == 0

    def product_of(self, variant_id) -> dict | None:
        """The variant's product, when both the variant and the product exist."""
        variant = self.variants.get(variant_id)
        return None if variant is None else self.products.get(variant["product_id"])

    def variant_size(self, variant_id) -> str:
        cache = self.variants[variant_id]["index_cache"]
        size = json_text(cache.get("mens_size")) if isinstance(cache, dict) else None
        return "Unknown" if size is None else size

    # ---- profile fields

    def _usersizes(self) -> dict:
        """user_id -> mens size: the preferred mens_size row with the lowest attribute_preferences.id."""
        t = self.tables
        mens = {a["id"] for a in t["attributes"] if a["name"] == "mens_size"}
        values = {v["id"]: v["value"] for v in t["attribute_values"]}
        owner = {p["id"]: p["user_id"] for p in t["user_preferences"]}
        candidates = defaultdict(list)
        for ap in t["attribute_preferences"]:
            if ap["preferred"] and ap["attribute_id"] in mens and ap["user_preference_id"] in owner:
                if ap["attribute_value_id"] in values:
                    candidates[owner[ap["user_preference_id"]]].append(ap)
        sizes = {}
        for user, aps in candidates.items():
            lowest = min(aps, key=lambda ap: ap["id"])
            sizes[user] = values[lowest["attribute_value_id"]]
        return sizes

    def profile(self, user_id) -> list[str]:
        """user_id, username, firstName, usersize."""
        user = self.users[user_id]
        return [
            str(user_id),
            text(user["username"]),
            text(user["first_name"]),
            text(self.usersize.get(user_id)),
        ]

    def last_active_text(self, user_id) -> str:
        return pg_timestamptz_text(self.last_active.get(user_id))

    # ---- demand counts

    def _demand_counts(self) -> None:
        """Per variant: OPEN_FOR_TRADE inventory items and live wishlist items, of live users."""
        self.open_inventory = defaultdict(int)
        for item in self.tables["inventory_items"]:
            if item["status"] == OPEN and self.live_user(item["user_id"]):
                self.open_inventory[item["product_variant_id"]] += 1
        self.live_wishlist = defaultdict(int)
        for item in self.tables["wishlist_items"]:
            if item["deleted_at"] == 0 and self.live_user(item["user_id"]):
                self.live_wishlist[item["product_variant_id"]] += 1


def group(rows: list[dict], key: str) -> dict[Any, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row[key]].append(row)
    return grouped


# --------------------------------------------------------------------------- Layer 5


def target_shoe(src: Source, user_id) -> tuple[str, str]:
    """(product name, variant id) of the user's target shoe; ('', '') when there is none."""
    # 1. live desired items whose variant and product exist: offers_count desc, newest, lowest id
    desired = [
        d
        for d in src.desired_of_user.get(user_id, [])
        if d["deleted_at"] == 0 and src.product_of(d["product_variant_id"]) is not None
    ]
    best = first(desired, lambda d: (-d["offers_count"], -micros(d["created_at"]), d["id"]))
    if best:
        return src.product_of(best["product_variant_id"])["name"], str(best["product_variant_id"])

    # items of the user's offers: newest offer first, then the lowest offer item id
    offer_items = [
        (offer, item)
        for offer in src.offers_of_user.get(user_id, [])
        for item in src.items_of_offer.get(offer["id"], [])
    ]

    def newest_offer_first(pair):
        return (-micros(pair[0]["created_at"]), pair[1]["id"])

    # 2. an item of the most recent offer whose variant and product exist
    existing = [(o, i) for o, i in offer_items if src.product_of(i["product_variant_id"]) is not None]
    best = first(existing, newest_offer_first)
    if best:
        variant_id = best[1]["product_variant_id"]
        return src.product_of(variant_id)["name"], str(variant_id)

    # 3. live wishlist items whose variant and product exist: newest, then lowest id
    wishlist = [
        w
        for w in src.wishlist_of_user.get(user_id, [])
        if w["deleted_at"] == 0 and src.product_of(w["product_variant_id"]) is not None
    ]
    best = first(wishlist, lambda w: (-micros(w["created_at"]), w["id"]))
    if best:
        return src.product_of(best["product_variant_id"])["name"], str(best["product_variant_id"])

    # 4. an offer item with any non-null variant, even a missing one
    referenced = [(o, i) for o, i in offer_items if i["product_variant_id"] is not None]
    best = first(referenced, newest_offer_first)
    if best:
        variant_id = best[1]["product_variant_id"]
        product = src.product_of(variant_id)
        return (product["name"] if product else "Unknown Product"), str(variant_id)
    return "", ""


def layer5(src: Source, as_of: datetime, v: dict) -> dict[str, list[list[str]]]:
    """prefix -> [header, rows...] for each NON-EMPTY level (an empty level writes no file)."""
    low = as_of - timedelta(days=v["new_user_max_age_days"])
    high = as_of - timedelta(hours=v["new_user_min_age_hours"])
    base = [
        u
        for u in src.tables["users"]
        if u["deleted_at"] == 0 and u["first_name"] is not None and low <= u["created_at"] <= high
    ]

    def level_of(user) -> int:
        uid = user["id"]
        if not src.inventory_of_user.get(uid):
            return 1
        if user["bio"] is None or pg_trim(user["bio"]) == "":
            return 2
        if not src.offers_of_user.get(uid):
            return 3
        if not [w for w in src.wishlist_of_user.get(uid, []) if w["deleted_at"] == 0]:
            return 4
        return 5

    def newest_signup_first(user):
        return (-micros(user["created_at"]), user["id"])

    files = {}
    for level, prefix, header in L5_LEVELS:
        members = [u for u in base if level_of(u) == level]
        members.sort(key=newest_signup_first)
        rows = []
        for user in members:
            row = [str(user["id"]), text(user["username"]), text(user["first_name"]), str(level)]
            if level >= 3:
                row += list(target_shoe(src, user["id"]))
            rows.append(row)
        if rows:
            files[prefix] = [header] + rows
    return files


# --------------------------------------------------------------------------- Layer 3


def layer3(src: Source, as_of: datetime, v: dict) -> dict[str, list[list[str]]]:
    """prefix -> [header, rows...] for all three files (header only when empty)."""
    start = as_of - timedelta(hours=v["lookback_hours"] - v["cooling_hours"])
    end = as_of - timedelta(hours=v["cooling_hours"])

    def in_window(ts: datetime) -> bool:
        return start <= ts < end

    # (activity, user_id, created_at, variant_id, activity id)
    activities = []
    for item in src.tables["inventory_items"]:
        if item["status"] == OPEN and in_window(item["created_at"]):
            activities.append(
                ("closet_add", item["user_id"], item["created_at"], item["product_variant_id"], item["id"])
            )
    for item in src.tables["wishlist_items"]:
        if item["deleted_at"] == 0 and in_window(item["created_at"]):
            activities.append(
                ("wishlist_add", item["user_id"], item["created_at"], item["product_variant_id"], item["id"])
            )
    for offer in src.tables["offers"]:
        items = src.items_of_offer.get(offer["id"], [])
        if in_window(offer["created_at"]) and items:
            variant_id = min(items, key=lambda i: i["id"])["product_variant_id"]
            user_id = offer["creator_user_id"]
            activities.append(("offer_created", user_id, offer["created_at"], variant_id, offer["id"]))
    activities = [
        a for a in activities if a[3] is not None and src.product_of(a[3]) is not None and src.live_user(a[1])
    ]

    priority = {name: rank for rank, (name, _, _) in enumerate(L3_ACTIVITIES)}
    kept = {}
    for activity in sorted(activities, key=lambda a: (priority[a[0]], -micros(a[2]), a[3], a[4])):
        kept.setdefault(activity[1], activity)

    by_file = defaultdict(list)
    for name, user_id, created_at, variant_id, _ in kept.values():
        if name == "closet_add":
            count = src.live_wishlist[variant_id]
            if count < v["min_wishlist_count"]:
                continue
        else:
            count = src.open_inventory[variant_id]
            if count < v["min_inventory_count"]:
                continue
        row = src.profile(user_id) + [
            src.variant_size(variant_id),
            src.product_of(variant_id)["name"],
            str(variant_id),
            src.last_active_text(user_id),
            str(count),
        ]
        by_file[name].append(((-micros(created_at), user_id), row))

    return {
        prefix: [header] + [row for _, row in sorted(by_file[name], key=lambda pair: pair[0])]
        for name, prefix, header in L3_ACTIVITIES
    }


# --------------------------------------------------------------------------- Layer 2


def trending_products(src: Source, as_of: datetime, v: dict) -> dict[Any, int]:
    """product_id -> rank (1..top_n)."""
    start = as_of - timedelta(days=v["trending_lookback_days"])
    offers_of_product = defaultdict(set)
    for item in src.tables["offer_items"]:
        offer = src.offers.get(item["offer_id"])
        product = src.product_of(item["product_variant_id"])
        if offer is not None and product is not None and start <= offer["created_at"] < as_of:
            offers_of_product[product["id"]].add(offer["id"])
    ranked = sorted(offers_of_product, key=lambda p: (-len(offers_of_product[p]), src.products[p]["name"], p))
    return {product_id: rank for rank, product_id in enumerate(ranked[: v["trending_top_n"]], start=1)}


def layer2(src: Source, as_of: datetime, v: dict) -> dict[str, list[list[str]]]:
    """prefix -> [header, rows...] for both files."""
    rank_of = trending_products(src, as_of, v)
    active_since = as_of - timedelta(days=v["activity_days"])

    holdings = defaultdict(list)  # user_id -> [(rank, demand, inventory item)]
    for item in src.tables["inventory_items"]:
        user_id = item["user_id"]
        product = src.product_of(item["product_variant_id"])
        last_active = src.last_active.get(user_id)
        if (
            item["status"] == OPEN
            and product is not None
            and product["id"] in rank_of
            and src.live_user(user_id)
            and last_active is not None
            and last_active >= active_since
        ):
            demand = src.live_wishlist[item["product_variant_id"]]
            holdings[user_id].append((rank_of[product["id"]], demand, item))

    rows = []
    for user_id, held in holdings.items():
        rank, demand, item = min(
            held,
            key=lambda h: (h[0], -h[1], -micros(h[2]["created_at"]), h[2]["product_variant_id"], h[2]["id"]),
        )
        if demand < v["min_demand"]:
            continue
        variant_id = item["product_variant_id"]
        row = src.profile(user_id) + [
            src.product_of(variant_id)["name"],
            str(variant_id),
            src.variant_size(variant_id),
            ordinal(rank),
            str(demand),
            src.last_active_text(user_id),
        ]
        rows.append(((rank, -demand, user_id), row))
    rows.sort(key=lambda pair: pair[0])

    top1 = [row for (rank, _, _), row in rows if rank == 1]
    rest = [row for (rank, _, _), row in rows if rank > 1]
    return {"trending-closet-top1": [L2] + top1, "trending-closet-top2-10": [L2] + rest}


# --------------------------------------------------------------------------- all files


def expected_files(tables: dict[str, list[dict]], as_of: datetime, vars: dict | None = None):
    """prefix -> [header, rows...] of every production file that should exist for this as_of."""
    v = {**DEFAULT_VARS, **(vars or {})}
    src = Source(tables)
    return {**layer5(src, as_of, v), **layer3(src, as_of, v), **layer2(src, as_of, v)}


ALL_PREFIXES = [p for _, p, _ in L5_LEVELS] + [p for _, p, _ in L3_ACTIVITIES] + [p for p, _ in L2_FILES]
LAYER5_PREFIXES = [p for _, p, _ in L5_LEVELS]

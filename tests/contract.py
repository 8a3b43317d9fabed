"""The CSV headers of AUDIENCES.md, written out once for the tests that check files against it."""

L5_SHORT = ["user_id", "username", "firstName", "new_user_level"]
L5_LONG = L5_SHORT + ["top_target_shoe", "top_target_shoe_variantid"]
L3 = ["user_id", "username", "firstName", "usersize", "relevant_variant_size", "product_name", "variantID",
      "lastActive"]  # fmt: skip
L2 = ["user_id", "username", "firstName", "usersize", "product_name", "variantID", "relevant_variant_size",
      "trending_rank", "wishlist_count", "lastActive"]  # fmt: skip

"""Serving: the item index, fold-in of new users and items, and batch inference (local and Spark)."""

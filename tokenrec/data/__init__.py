"""Raw-format loaders, the Spark ETL (cleaning, k-core, ID maps, splits) and the in-memory snapshot view."""

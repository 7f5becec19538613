"""Alembic migrations of the store, shipped with the package; run by `pdp.store.migrate`."""

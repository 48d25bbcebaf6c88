"""`synapse apply`, `verify`, `rollback`, `history`: tune an installed machine safely."""

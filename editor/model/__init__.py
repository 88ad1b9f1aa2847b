"""Model access: the architecture table, loading and the model store, activation capture."""

"""Analysis: sensitivity of each layer to pruning, and layer/rate selection from it."""

"""digits' web layer: a thin FastAPI service over `model/`, and the `digits` command."""

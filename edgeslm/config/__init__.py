"""Target and recipe configuration (TOML files → frozen dataclasses)."""

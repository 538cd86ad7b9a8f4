"""The config tree: sections, profiles, one coercer and validator, and the CLI flags generated from it."""

"""Console entry points declared in ``pyproject.toml`` (``[project.scripts]``)."""

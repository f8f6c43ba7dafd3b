"""Model store: manifests (models/*.json), downloads, the PyPI mirror."""

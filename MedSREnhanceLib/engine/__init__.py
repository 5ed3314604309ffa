"""The engine: ``enhance`` (task and model dispatch, named result volumes) over tiled inference (device, precision,
out-of-memory fallback, progress, cancel). Uncertainty, consistency, adaptation and other backends belong here."""

"""Models: the static registry (learned and classical), one file per architecture, the flip ensemble, the
classical methods and the bundled weights with their model cards (``weights/``)."""

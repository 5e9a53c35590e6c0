"""The settings a run is given: the typed schemas with every default (`schema`) and the range of every numeric
setting with the one check of them all (`ranges`). The lowest layer: it imports nothing of the package but errors."""

"""Model backends behind small Protocols (`base`, `scorers`); `factory` builds them from config.
Backends never import stages."""

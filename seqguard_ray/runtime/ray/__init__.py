"""The Ray runtime: Ray Data scoring (``batch``), Ray Train training (``train``), both thin
adapters over the in-process engine's stages; ``cluster`` connects to or starts Ray."""

"""The vault: storage for packs, a catalog of machines and points, and the rules over both."""

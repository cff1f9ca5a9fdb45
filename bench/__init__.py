"""``make bench``: measurements against the real emulator, printed as ratios side by side."""

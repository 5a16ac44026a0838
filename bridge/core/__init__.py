"""The bridge's own types, with no import of the rest of the project: the bottom layer."""

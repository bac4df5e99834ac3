"""Recipes: runs that bring their own models and presets (the CPU demo); real runs never import them."""

"""Training: recipes, the shared loop, and the procedures that train each family here on the CPU."""

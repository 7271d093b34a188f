"""check: what is right and how wrong: shapes, input sets, references, metrics and the floor, localisation."""

"""show: terminal tables and heat maps."""

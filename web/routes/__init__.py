"""Route blueprints, one module per area of the API."""

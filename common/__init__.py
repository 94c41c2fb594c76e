"""Small shared plumbing for the nanoreason scripts (never algorithm logic)."""

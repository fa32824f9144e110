"""registrar."""

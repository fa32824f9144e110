"""firmware_catalog."""

"""DRR engine: cone-beam geometry, X-ray physics, ray casting, label projection."""

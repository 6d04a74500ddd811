"""Reports: PNG montages of volumes and label maps (static HTML reports come later)."""

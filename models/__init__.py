"""Model catalog and management: `localspec.models`."""

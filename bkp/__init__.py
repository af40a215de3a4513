"""bkp: backups, restore drills and certified data destruction for tenants kept in the EEA."""

__version__ = "0.1.0"

"""A tenant's lifecycle: init, backup, restore, drill, the nightly run, status, schedule."""

"""The words of the decommission workflow, in one place: the library checks them and the
command line offers them (a light module: `bkp --help` must stay fast)."""

MEDIA_TYPES = ("hdd", "ssd", "nvme", "usb", "tape", "optical", "other")
# A medium's state is the state of its latest event; the events are its history.
MEDIA_STATES = ("registered", "sanitizing", "sanitized", "failed", "aborted", "destroyed")
SANITIZE_METHODS = ("zero", "random", "dod3", "ata-secure-erase", "ata-sanitize",
                    "nvme-format", "nvme-sanitize")
DESTROY_METHODS = ("shred", "disintegrate", "degauss", "incinerate", "other")
VERIFY_MODES = ("full", "sample")
DESTINATIONS_AFTER = ("reuse", "storage", "return", "recycle", "destroy")

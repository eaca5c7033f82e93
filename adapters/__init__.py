"""Adapters between external formats (CAP, EIDO, 112 NUE contact card, CAD REST) and the hub; one subpackage per format. None is built yet."""

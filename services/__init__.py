"""The SKU choreography demo: warehouse feed, inventory, catalog and wishlist services.

Written as a user of choreo would write them, with choreo's public API only.
"""

"""Open311 GeoReport v2 (wiki.open311.org/GeoReport_v2) at /open311/v2.

Our categories are the services, a POST becomes a ticket in the normal queue with
channel "open311", and GET shows those tickets' public side. `open311_routes`
gives the hotline its routes; the key functions back `main.py open311-key`.
"""

from channels.open311.keys import ApiKeyError, issue_key, list_keys, revoke_key
from channels.open311.routes import Open311Config, open311_routes

__all__ = [
    "ApiKeyError",
    "Open311Config",
    "issue_key",
    "list_keys",
    "open311_routes",
    "revoke_key",
]

"""(being written)"""

from __future__ import annotations

from server.routing import RouteTable

routes = RouteTable("docs")

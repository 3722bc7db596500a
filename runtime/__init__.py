"""The composition root: builds every service from the settings, wires them, stops them.

It knows no aiohttp: ``server/`` holds the app and hands it the :class:`Services`
this package builds. See :mod:`chat_storage.runtime.services` for the start and the
shutdown order.
"""

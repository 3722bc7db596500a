"""Live streaming: feeds, subscriptions, producers' streams, the broker relay, the sweeper.

It knows nothing of the write path (``actors.write``): it is told of commits as the
write path's commit listener (:class:`~chat_storage.actors.live.fanout.Fanout`
implements it) and writes through a small
:class:`~chat_storage.actors.live.streams.Writer` protocol; the composition root
hands each side the other. Below ``server/``, events are JSON bodies encoded once:
their transports frame them at the edge.
"""

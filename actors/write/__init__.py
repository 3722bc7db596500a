"""The write path: per-session mailboxes, group commit, ack after COMMIT.

It knows nothing of live streaming (``actors.live``): it tells a
:class:`~chat_storage.actors.write.protocols.CommitListener` about every commit and
asks it whether a session is still in use; the composition root hands it one.
"""

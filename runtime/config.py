"""The knobs of the write path and of live streaming, from the settings."""

from __future__ import annotations

from chat_storage.actors.live.config import HubConfig
from chat_storage.actors.live.stream_state import StreamConfig
from chat_storage.actors.write.config import WriteConfig
from chat_storage.runtime.settings import Settings


def write(settings: Settings) -> WriteConfig:
    """The write path's knobs."""
    return WriteConfig(
        max_batch=settings.max_batch,
        mailbox_size=settings.mailbox_size,
        # all mailboxes together: bounded memory however many sessions are written to
        max_pending=max(settings.mailbox_size * 16, settings.max_batch * 4),
        acquire_timeout_s=settings.db_acquire_timeout_s,
        commit_timeout_s=settings.write_timeout_s,
        settle_timeout_s=settings.write_timeout_s,
    )


def live(settings: Settings) -> HubConfig:
    """The streaming knobs."""
    return HubConfig(
        send_queue=settings.ws_send_queue,
        stream=StreamConfig(
            checkpoint_interval_s=settings.checkpoint_interval_s,
            checkpoint_chars=settings.checkpoint_chars,
            grace_s=settings.stream_grace_s,
            max_content_bytes=settings.max_content_bytes,
            acquire_timeout_s=settings.db_acquire_timeout_s,
        ),
    )

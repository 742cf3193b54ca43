"""Chat platforms: one set of inbound events and one set of outbound operations for all."""

from anycode_actors.chat.base import (
    Button,
    ButtonPress,
    ChatClient,
    ChatError,
    ChatEvent,
    ChatLimits,
    ChatRef,
    ChatUnavailable,
    Command,
    Message,
    MessageGone,
    NotModified,
    RateLimited,
    User,
)

__all__ = [
    "Button",
    "ButtonPress",
    "ChatClient",
    "ChatError",
    "ChatEvent",
    "ChatLimits",
    "ChatRef",
    "ChatUnavailable",
    "Command",
    "Message",
    "MessageGone",
    "NotModified",
    "RateLimited",
    "User",
]

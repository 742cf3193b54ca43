"""The actors: chat, session, stream, flusher, router, watchdog, admin."""

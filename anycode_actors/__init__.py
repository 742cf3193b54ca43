"""anycode-actors: run coding agents in sandboxes from chat, as an actor system on Trio."""

__version__ = "0.1.0"

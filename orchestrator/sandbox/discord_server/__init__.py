"""A Discord-compatible REST + gateway server on loopback, for testing real discord.py clients.

:class:`DiscordSandbox` (``control.py``) composes the world it holds (``state.py``: guilds,
channels, roles, users and messages), the websocket gateway (``gateway.py``), the REST API
(``rest.py``) and the files it stores and serves as Discord's CDN does (``attachments.py``) on one
port. Run it alone with ``python -m orchestrator.sandbox.discord_server``
(``cli.py``).
"""

from .cli import main
from .control import DiscordSandbox
from .gateway import GatewaySession
from .rest import RestFault
from .state import SentMessage

__all__ = ["DiscordSandbox", "GatewaySession", "RestFault", "SentMessage", "main"]

"""Herald device client: asyncio (``Client``) and synchronous (``SyncClient``)."""

from .client import FATAL_CODES, Client, Disconnect, State
from .frames import Error, GoAway, ProtocolError, Push, Welcome
from .sync import SyncClient

__all__ = ["Client", "SyncClient", "Disconnect", "State", "Push", "Welcome", "Error", "GoAway", "ProtocolError", "FATAL_CODES"]
__version__ = "1.0.0"

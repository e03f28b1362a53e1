"""Conversation memory: the store interface, its SQLite implementation, and context fitting."""

from .context import fit_context as fit_context
from .sqlite import SQLiteStore as SQLiteStore
from .store import SHARED as SHARED
from .store import ConversationKey as ConversationKey
from .store import ConversationStore as ConversationStore
from .store import DailyUsage as DailyUsage
from .store import Forgotten as Forgotten
from .store import StoredTurn as StoredTurn
from .store import Turn as Turn
from .store import UserData as UserData

"""Conversation memory: the store interface, its SQLite and PostgreSQL implementations, opening the
one bots.yaml names, and context fitting."""

from .context import fit_context as fit_context
from .open import open_store as open_store
from .postgres import PostgresStore as PostgresStore
from .sqlite import SQLiteStore as SQLiteStore
from .store import SHARED as SHARED
from .store import ConversationKey as ConversationKey
from .store import ConversationStore as ConversationStore
from .store import DailyUsage as DailyUsage
from .store import Forgotten as Forgotten
from .store import NoDatabase as NoDatabase
from .store import Store as Store
from .store import StoredTurn as StoredTurn
from .store import StoreUnavailable as StoreUnavailable
from .store import Turn as Turn
from .store import UserData as UserData

"""bots.yaml: the schema (pydantic), loading with file/line errors, secrets from the environment.

``load_config(path)`` returns a fully resolved :class:`Config` (defaults merged into every bot,
secrets read from the environment or the ``.env`` beside bots.yaml) or raises :class:`ConfigError`
listing every problem with its file and line. Secrets are never read from the YAML file itself.
Commands that do not connect to Discord (or to a provider) ask for fewer secrets:
``require_tokens`` / ``require_api_keys``.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import unquote, urlsplit

import yaml
from dotenv import dotenv_values
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from redis.asyncio.connection import parse_url as parse_redis_url

from .errors import ConfigError, ConfigIssue

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 50_000
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Never echo the value: a *_env key that is not a variable name is usually the secret itself.
_NOT_A_NAME = (
    "must be the *name* of an environment variable (letters, digits and _), not the secret itself; "
    "put the secret in the environment or in .env (e.g. DISCORD_TOKEN_SAGE=...) and write its name here"
)


_IMAGE_SIZE = re.compile(r"([1-9]\d{1,3})x([1-9]\d{1,3})")


def _image_size(value: str) -> str:
    """``WIDTHxHEIGHT`` in pixels as the images endpoint takes it (each side 10-9999), or ``auto``."""
    if value != "auto" and not _IMAGE_SIZE.fullmatch(value):
        raise ValueError(f"image_size {value!r} must be WIDTHxHEIGHT in pixels (e.g. 1024x1024, 1792x1024) or auto")
    return value


ImageSize = Annotated[str, AfterValidator(_image_size)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiscordSettings(_Model):
    api_url: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg"
    # seconds discord.py waits after the last GUILD_CREATE before a bot counts as ready
    guild_ready_timeout: float = Field(0.5, ge=0, le=60)


class ModelPrice(_Model):
    """What a model costs, in USD per million tokens (the way providers list their prices)."""

    input: float = Field(ge=0, le=100_000)  # prompt tokens
    output: float = Field(ge=0, le=100_000)  # completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for one request's usage."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class ProviderSettings(_Model):
    base_url: str
    api_key_env: str | None = None
    # requests in flight: the limit adapts to the provider (llm/aimd.py) from 16 up to 256,
    # or from this hard cap below it
    max_concurrency: int | None = Field(None, ge=1, le=1024)
    max_queue: int = Field(256, ge=0, le=100_000)
    queue_timeout: float = Field(30.0, gt=0, le=3600)
    timeout: float = Field(60.0, gt=0, le=3600)
    max_retries: int = Field(3, ge=0, le=10)
    breaker_threshold: int = Field(5, ge=1, le=1000)  # consecutive failures that open the circuit
    breaker_cooldown: float = Field(30.0, gt=0, le=3600)  # seconds before a probe request
    prices: dict[str, ModelPrice] = Field(default_factory=dict)  # by model; over the top-level prices


class SamplingParams(_Model):
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)

    @cached_property
    def body(self) -> dict[str, float | int]:
        """The parameters that are set, as request body fields (computed once per configuration)."""
        return self.model_dump(exclude_none=True)


class QuotaSettings(_Model):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)
    usd_per_day: float | None = Field(None, gt=0)  # needs a price for the bot's model
    images_per_day: int | None = Field(None, ge=0)  # `<prefix>imagine`; 0: none


class AccessSettings(_Model):
    guilds: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    roles: tuple[int, ...] = ()
    dms: bool = False
    admins: tuple[int, ...] = ()
    admin_roles: tuple[int, ...] = ()
    allow_bots: bool = False


class MemorySettings(_Model):
    scope: Literal["user", "channel"] = "user"
    context_tokens: int = Field(3000, ge=100, le=2_000_000)
    max_turns: int = Field(50, ge=0, le=10_000)
    max_age_days: float | None = Field(30.0, gt=0)


class ContextSettings(_Model):
    channel_messages: int = Field(20, ge=0, le=100)  # recent channel messages the model sees; 0: none


class GroupSettings(_Model):
    talk_to_personas: bool = True  # answer other personas of this orchestrator that address this one
    max_bot_turns: int = Field(3, ge=0, le=100)  # persona messages in a channel before a human speaks again
    max_bot_messages_per_minute: int = Field(12, ge=0, le=1000)  # persona messages per channel and minute
    max_panel_rounds: int = Field(3, ge=1, le=20)


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1_000, "mb": 1_000_000}


def _on_or_settings(value: Any) -> Any:
    """``vision: true|false`` is ``{enabled: ...}``; a mapping turns vision on unless it says ``enabled: false``."""
    if isinstance(value, bool):
        return {"enabled": value}
    if not isinstance(value, dict):
        raise ValueError("must be true, false or a mapping such as {inline: true, max_images: 4}")
    return {"enabled": True, **value} if value else value


class VisionSettings(_Model):
    """``vision:``: images attached to a message reach the model as image parts (persona/attachments.py)."""

    enabled: bool = False
    max_images: int = Field(4, ge=1, le=16)  # per message
    max_bytes: int = Field(8_000_000, ge=1_000, le=20_000_000)  # per image: a number of bytes, or "8 MB"
    inline: bool = False  # send the image's bytes (a data: URL) instead of its Discord URL

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _on_or_settings(value)

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        found = _SIZE.fullmatch(value)
        if found is None:
            raise ValueError("must be a number of bytes or a size such as '8 MB' or '500 KB' (1 MB = 1,000,000 bytes)")
        return round(float(found[1]) * _SIZE_UNITS[(found[2] or "b").lower()])


class CommandSettings(_Model):
    """``commands:``: the bot's slash commands (persona/slash.py)."""

    enabled: bool = True  # false: no slash commands are registered (prefix commands still work)
    # register in these guilds only (instant, for testing servers); empty: globally
    guilds: tuple[int, ...] = ()


class RestartSettings(_Model):
    max_restarts: int = Field(5, ge=0, le=1000)
    window: float = Field(60.0, gt=0)
    backoff_initial: float = Field(1.0, ge=0)
    backoff_max: float = Field(60.0, ge=0)


class Defaults(_Model):
    provider: str | None = None
    model: str = "gpt-4o-mini"
    prefix: str = "!"
    params: SamplingParams = SamplingParams()
    quota: QuotaSettings = QuotaSettings()
    user_quota: QuotaSettings = QuotaSettings()
    access: AccessSettings = AccessSettings()
    memory: MemorySettings = MemorySettings()
    context: ContextSettings = ContextSettings()
    group: GroupSettings = GroupSettings()
    vision: VisionSettings = VisionSettings()
    commands: CommandSettings = CommandSettings()
    stream: bool = False
    message_content: bool = True  # ask for the privileged Message Content intent (see BotSpec)
    mailbox_size: int = Field(32, ge=1, le=10_000)
    concurrency: int = Field(32, ge=1, le=256)  # answers in progress per bot (one at a time per conversation)
    image_model: str | None = None  # `<prefix>imagine` draws with it; None: not enabled
    image_size: ImageSize = "1024x1024"


class BotSettings(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    token_env: str
    persona: str
    description: str | None = Field(None, max_length=300)  # what `<prefix>help` says the persona is
    provider: str | None = None
    model: str | None = None
    prefix: str | None = None
    weight: float = Field(1.0, gt=0, le=1000)
    params: dict[str, Any] = {}
    quota: dict[str, Any] = {}
    user_quota: dict[str, Any] = {}
    access: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    context: dict[str, Any] = {}
    group: dict[str, Any] = {}
    vision: dict[str, Any] = {}  # or true/false
    commands: dict[str, Any] = {}
    stream: bool | None = None
    message_content: bool | None = None
    mailbox_size: int | None = Field(None, ge=1, le=10_000)
    concurrency: int | None = Field(None, ge=1, le=256)
    image_model: str | None = Field(None, min_length=1)
    image_size: ImageSize | None = None

    @field_validator("vision", mode="before")
    @classmethod
    def _vision_shorthand(cls, value: Any) -> Any:
        return _on_or_settings(value)

    @field_validator("prefix")
    @classmethod
    def _prefix_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("prefix must contain a visible character")
        return value


class FleetSettings(_Model):
    """``fleet:``: several ``orchestrator run`` processes share the bots through Redis (orchestrator/fleet/)."""

    redis_url: str | None = None  # without a password; one with a password goes in the environment
    redis_url_env: str | None = None
    node_id: str | None = None  # unique in the fleet; default: ORCHESTRATOR_NODE_ID, else hostname-pid
    lease_ttl: float = Field(6.0, ge=0.3, le=600)  # seconds a node keeps a bot without reaching Redis
    key_prefix: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # one fleet's keys: fleet:<key_prefix>:...


class FileSettings(_Model):
    """The literal shape of bots.yaml."""

    discord: DiscordSettings = DiscordSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    defaults: Defaults = Defaults()
    bots: list[BotSettings] = Field(default_factory=list)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)  # by model, for every provider
    database: str = "orchestrator.sqlite3"  # a SQLite file, or a postgresql:// URL
    database_env: str | None = None  # names the variable holding the database (a URL may carry a password)
    fleet: FleetSettings | None = None
    health_port: int | None = Field(None, ge=0, le=65535)
    restart: RestartSettings = RestartSettings()


# ---------------------------------------------------------------- resolved, ready-to-run config


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    base_url: str
    api_key: SecretStr  # empty: the provider takes no key, and requests carry no Authorization header
    settings: ProviderSettings


@dataclass(frozen=True)
class BotSpec:
    """One bot with defaults merged in and its token resolved."""

    name: str
    token: SecretStr
    persona: str
    description: str  # one line for `<prefix>help`: bots.yaml's description, or the persona's first line
    provider: str
    model: str
    price: ModelPrice | None  # of ``model`` at ``provider``; None: spend is not counted
    prefix: str
    weight: float
    params: SamplingParams
    quota: QuotaSettings
    user_quota: QuotaSettings
    access: AccessSettings
    memory: MemorySettings
    context: ContextSettings
    group: GroupSettings
    vision: VisionSettings
    commands: CommandSettings
    stream: bool
    mailbox_size: int
    concurrency: int
    image_model: str | None = None  # of ``provider``; None: image generation is not enabled
    image_size: str = "1024x1024"
    # False: the bot does not ask for the privileged Message Content intent. Discord then sends it the
    # text of a guild message only when the message mentions it, replies to it or is its own (and of
    # every DM): prefix commands work in DMs only, channels use @mentions and replies.
    message_content: bool = True

    def needs_reconnect(self, other: BotSpec) -> bool:
        """True when going from ``self`` to ``other`` needs a new Discord connection (and actor); the
        intents are sent once, when the connection identifies."""
        return (self.token, self.mailbox_size, self.concurrency, self.message_content) != (
            other.token,
            other.mailbox_size,
            other.concurrency,
            other.message_content,
        )


_POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True, repr=False)
class PostgresURL:
    """The postgresql:// URL of the memory database. It may carry a password, so ``str`` and ``repr``
    show it without one (nor the query, where a ``password=`` may be too)."""

    secret: SecretStr

    @property
    def url(self) -> str:
        return self.secret.get_secret_value()

    @property
    def place(self) -> str:
        """``user@host:port/database``, for messages."""
        parts = urlsplit(self.url)
        user = f"{parts.username}@" if parts.username else ""
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        return f"{user}{parts.hostname or ''}{port}{parts.path}"

    def __str__(self) -> str:
        return f"{urlsplit(self.url).scheme}://{self.place}"

    def __repr__(self) -> str:
        return f"PostgresURL({str(self)!r})"

    @property
    def has_password(self) -> bool:
        parts = urlsplit(self.url)
        return parts.password is not None or "password=" in parts.query

    def secrets(self) -> list[str]:
        """What the log redactor must hide: the URL, and its password as written and decoded."""
        parts = urlsplit(self.url)
        found = [self.url]
        passwords = [parts.password or ""]
        passwords += [pair.split("=", 1)[1] for pair in parts.query.split("&") if pair.startswith("password=")]
        for password in passwords:
            found += [password, unquote(password)]
        return [secret for secret in found if secret]


@dataclass(frozen=True)
class FleetSpec:
    """Fleet mode, resolved: the Redis URL read (it may carry a password), this node's id."""

    redis_url: SecretStr  # empty when the command did not ask for it (``require_redis``)
    node_id: str
    lease_ttl: float
    key_prefix: str


@dataclass(frozen=True)
class Config:
    path: Path
    discord: DiscordSettings
    providers: dict[str, ProviderSpec]
    bots: dict[str, BotSpec]
    database: Path | PostgresURL  # SQLite file, or PostgreSQL
    health_port: int | None
    restart: RestartSettings
    warnings: list[str] = field(default_factory=list, compare=False)
    fleet: FleetSpec | None = None  # None: one process runs every bot


# ---------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    require_tokens: bool = True,
    require_api_keys: bool = True,
    require_redis: bool = False,
) -> Config:
    """Read, validate and resolve ``path``. ``env`` defaults to the process environment over the
    ``.env`` beside ``path`` (only that one, wherever the command is run from)."""
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, None, "", f"cannot read the file: {exc.strerror or exc}")]) from exc
    dotenv = None
    if env is None:
        dotenv = dotenv_in(path.parent)
        env = _environment_over(dotenv)
    return parse_config(
        raw,
        name,
        env,
        base_dir=path.parent,
        dotenv=dotenv,
        require_tokens=require_tokens,
        require_api_keys=require_api_keys,
        require_redis=require_redis,
    )


def dotenv_in(directory: Path) -> Path | None:
    """The ``.env`` file in ``directory`` (the one beside bots.yaml), if there is one."""
    candidate = directory / ".env"
    return candidate if candidate.is_file() else None


def read_environment(directory: Path) -> dict[str, str]:
    """The process environment over ``directory/.env`` (the environment wins). The working
    directory's ``.env`` is never read: the same command gives the same result from anywhere."""
    return _environment_over(dotenv_in(directory))


def _environment_over(dotenv: Path | None) -> dict[str, str]:
    merged = {k: v for k, v in dotenv_values(dotenv).items() if v is not None} if dotenv else {}
    merged.update(os.environ)
    return merged


def parse_config(
    raw: bytes | str,
    name: str,
    env: Mapping[str, str],
    *,
    base_dir: Path | None = None,
    dotenv: Path | None = None,
    require_tokens: bool = True,
    require_api_keys: bool = True,
    require_redis: bool = False,
) -> Config:
    """Validate YAML text. Every problem found is reported at once in one :class:`ConfigError`.

    ``dotenv`` is the ``.env`` file whose values ``env`` includes (named in messages). Without
    ``require_tokens`` a bot's unset Discord token is no error (its token is then empty: such a
    config cannot run bots); likewise ``require_api_keys`` for the providers' keys. Only the commands
    that use Redis (``run``, ``status --fleet``) ask for the URL of ``fleet.redis_url_env`` (``require_redis``).
    """
    data, lines = _read_yaml(raw, name)
    try:
        settings = FileSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_issues_from_pydantic(exc.errors(), data, lines, name)) from None
    secrets = _SecretSource(
        env, dotenv, (base_dir or Path(".")) / ".env", require_tokens, require_api_keys, require_redis
    )
    return _resolve(settings, lines, name, secrets, base_dir or Path("."))


@dataclass(frozen=True)
class _SecretSource:
    """Where the *_env names are looked up, which of them must be set, and what to tell a user when
    one is not."""

    env: Mapping[str, str]
    dotenv: Path | None  # the .env that was read
    dotenv_expected: Path  # where one is read from
    require_tokens: bool
    require_api_keys: bool
    require_redis: bool

    def not_set(self, variable: str, what: str) -> str:
        if self.dotenv is not None:
            return (
                f"environment variable {variable} is not set (neither in the environment nor in {self.dotenv}); "
                f"put {what} in one of them"
            )
        return f"environment variable {variable} is not set; put {what} in the environment or in {self.dotenv_expected}"


def _read_yaml(raw: bytes | str, name: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    def fail(message: str, line: int | None = None) -> ConfigError:
        return ConfigError([ConfigIssue(name, line, "", message)])

    if isinstance(raw, bytes):
        if len(raw) > MAX_FILE_BYTES:
            raise fail(f"the file is larger than {MAX_FILE_BYTES // 1000} kB; is this the right file?")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            bad_line = raw[: exc.start].count(b"\n") + 1
            raise fail("the file is not valid UTF-8 text; save it as UTF-8", bad_line) from None
    else:
        text = raw
    too_deep = "the file is nested too deeply; bots.yaml needs only a few levels of indentation or brackets"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        message, line = _describe_yaml_error(exc, text)
        raise fail(message, line) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise fail(too_deep) from None
    if node is None:
        raise fail("the file is empty; it needs at least a 'bots:' list")
    lines: dict[tuple[Any, ...], int] = {}
    count = [0]
    try:
        _index_lines(node, (), lines, count)
    except RecursionError:
        if count[0] <= MAX_NODES:
            raise fail(too_deep) from None
        raise fail(f"the file expands to more than {MAX_NODES} values (YAML anchors?)") from None
    try:
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise fail(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise fail(too_deep) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a 5000-digit integer, the date 2020-13-45
        raise fail(f"not valid YAML: a value cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise fail("the top level must be a mapping with keys such as 'providers', 'defaults' and 'bots'", 1)
    return data, lines


def _describe_yaml_error(exc: yaml.YAMLError, text: str) -> tuple[str, int | None]:
    """A message and line for a syntax error. An unclosed ``{``, ``[`` or quote is noticed lines
    later (``problem_mark``); the line to fix is where it was opened (``context_mark``)."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    opened = getattr(exc, "context_mark", None)
    context = getattr(exc, "context", None) or ""
    unclosed = context.startswith(("while parsing a flow", "while scanning a quoted"))
    if opened is not None and mark is not None and unclosed:
        opener = repr(text[opened.index]) if opened.index < len(text) else "bracket"
        where = f"line {mark.line + 1}: " if mark.line != opened.line else ""
        return f"not valid YAML: the {opener} opened here is not closed properly ({where}{problem})", opened.line + 1
    return f"not valid YAML: {problem}", mark.line + 1 if mark else None


def _index_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int], count: list[int]) -> None:
    """Map each key path to its 1-based line; refuse alias bombs by counting expanded nodes."""
    count[0] += 1
    if count[0] > MAX_NODES:
        raise RecursionError("too many nodes")
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), lines, count)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines, count)


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        found = lines.get(tuple(loc[:end]))
        if found is not None:
            return found
    return None


_KNOWN_KEYS: dict[str, type[_Model]] = {
    "params": SamplingParams,
    "quota": QuotaSettings,
    "user_quota": QuotaSettings,
    "access": AccessSettings,
    "memory": MemorySettings,
    "context": ContextSettings,
    "group": GroupSettings,
    "vision": VisionSettings,
    "commands": CommandSettings,
}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields are valid at ``loc`` (for typo suggestions)."""
    if loc[:1] == ("providers",):  # providers.<any name>.<ProviderSettings key>
        return ProviderSettings if len(loc) == 2 else None
    model: type[BaseModel] | None = FileSettings
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        if model is FileSettings and part == "bots":
            model = BotSettings
            continue
        if part in _KNOWN_KEYS and model in (BotSettings, Defaults):
            model = _KNOWN_KEYS[part]
            continue
        info = model.model_fields.get(part)
        annotation: object = info.annotation if info else None  # object: it may be a union, not only a type
        if isinstance(annotation, types.UnionType):  # an optional section: ``FleetSettings | None``
            annotation = next((arg for arg in get_args(annotation) if arg is not type(None)), None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _where(loc: tuple[Any, ...], data: Any) -> str:
    parts: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            if isinstance(node, list) and part < len(node) and isinstance(node[part], dict):
                bot_name = node[part].get("name")
                if isinstance(bot_name, str) and parts and parts[-1] == "bots":
                    label = f"[{part}] (bot {bot_name!r})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(part))
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    return "".join(parts)


def _has(node: dict[Any, Any] | list[Any], part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _issues_from_pydantic(
    errors: list[Any], data: Any, lines: dict[tuple[Any, ...], int], name: str
) -> list[ConfigIssue]:
    """One issue per pydantic error, except a missing ``x_env`` whose value was pasted under ``x``:
    the unknown ``x`` already explains it."""
    pasted = {(*err["loc"][:-1], f"{err['loc'][-1]}_env") for err in errors if err["type"] == "extra_forbidden"}
    return [
        _issue_from_pydantic(err, data, lines, name)
        for err in errors
        if not (err["type"] == "missing" and tuple(err["loc"]) in pasted)
    ]


def _issue_from_pydantic(err: Any, data: Any, lines: dict[tuple[Any, ...], int], name: str) -> ConfigIssue:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":  # never echo the value: it may be a pasted secret
        parent = _model_at(loc[:-1])
        key = str(loc[-1])
        message = f"unknown key {key!r}"
        if parent is not None and f"{key}_env" in parent.model_fields:
            message += (
                f"; did you mean {key + '_env'!r}? Do not paste secrets into bots.yaml: put the value in the "
                "environment or in the .env beside bots.yaml and write the variable's name under "
                f"{key + '_env'!r}"
            )
        elif parent is not None:
            close = difflib.get_close_matches(key, list(parent.model_fields), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            else:
                message += f"; valid keys are {', '.join(parent.model_fields)}"
    elif kind == "missing":
        message = f"missing required key {str(loc[-1])!r}"
        loc_for_line = loc[:-1]
        return ConfigIssue(name, _line_for(lines, loc_for_line), _where(loc, data), message)
    else:
        message = err["msg"]
        if "input" in err and not isinstance(err["input"], (dict, list)):
            shown = repr(err["input"])
            message += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
    return ConfigIssue(name, _line_for(lines, loc), _where(loc, data), message)


def _merge(model: type[_Model], base: _Model, override: dict[str, Any]) -> Any:
    """Merge a bot's section over the defaults key by key."""
    return model.model_validate({**base.model_dump(), **override})


def _resolve(
    settings: FileSettings, lines: dict[tuple[Any, ...], int], name: str, secrets: _SecretSource, base_dir: Path
) -> Config:
    issues: list[ConfigIssue] = []
    env = secrets.env

    def located(loc: tuple[Any, ...], message: str) -> ConfigIssue:
        return ConfigIssue(name, _line_for(lines, loc), _where(loc, raw_view), message)

    def issue(loc: tuple[Any, ...], message: str) -> None:
        issues.append(located(loc, message))

    raw_view = settings.model_dump()
    raw_view["bots"] = [bot.model_dump() for bot in settings.bots]

    providers: dict[str, ProviderSpec] = {}
    for pname, pset in settings.providers.items():
        key = ""
        if pset.api_key_env and not _ENV_NAME.fullmatch(pset.api_key_env):
            issue(("providers", pname, "api_key_env"), _NOT_A_NAME)
        elif pset.api_key_env:
            key = env.get(pset.api_key_env, "")
            if not key and secrets.require_api_keys:
                issue(
                    ("providers", pname, "api_key_env"),
                    secrets.not_set(pset.api_key_env, f"the API key of provider {pname!r}"),
                )
        providers[pname] = ProviderSpec(pname, pset.base_url.rstrip("/"), SecretStr(key), pset)

    defaults = settings.defaults
    if not settings.bots:
        issue(("bots",), "no bots are configured; add at least one under 'bots:'")
    if defaults.provider is not None and defaults.provider not in providers:
        issue(("defaults", "provider"), _unknown_provider(defaults.provider, providers))

    bots: dict[str, BotSpec] = {}
    bot_locs: dict[str, tuple[Any, ...]] = {}
    seen_tokens: dict[str, str] = {}
    for index, bot in enumerate(settings.bots):
        loc = ("bots", index)
        if bot.name in bot_locs:
            issue((*loc, "name"), f"duplicate bot name {bot.name!r}; every bot needs its own name")
            continue
        bot_locs[bot.name] = loc
        token = env.get(bot.token_env, "") if _ENV_NAME.fullmatch(bot.token_env) else ""
        if not _ENV_NAME.fullmatch(bot.token_env):
            issue((*loc, "token_env"), _NOT_A_NAME)
        elif not secrets.require_tokens:
            pass  # this command does not connect to Discord
        elif not token:
            issue((*loc, "token_env"), secrets.not_set(bot.token_env, f"the Discord token of bot {bot.name!r}"))
        elif token in seen_tokens:
            issue(
                (*loc, "token_env"),
                f"bot {bot.name!r} uses the same Discord token as bot {seen_tokens[token]!r}; "
                "each bot needs its own application token",
            )
        else:
            seen_tokens[token] = bot.name
        provider = bot.provider or defaults.provider or (next(iter(providers)) if len(providers) == 1 else None)
        if provider is None:
            issue((*loc, "provider"), "no provider: set 'provider' on the bot or 'defaults.provider'")
        elif provider not in providers and bot.provider is not None:  # a wrong default is reported once, above
            issue((*loc, "provider"), _unknown_provider(provider, providers))
        if not bot.persona.strip():
            issue((*loc, "persona"), "persona is empty; write the system prompt for this bot")
        merged: dict[str, Any] = {}
        for section, section_model in _KNOWN_KEYS.items():
            try:
                merged[section] = _merge(section_model, getattr(defaults, section), getattr(bot, section))
            except ValidationError as exc:
                for err in exc.errors():
                    sub = {**err, "loc": (*loc, section, *err["loc"])}
                    issues.append(_issue_from_pydantic(sub, raw_view, lines, name))
        if len(merged) != len(_KNOWN_KEYS) or provider is None or provider not in providers:
            continue
        model = bot.model or defaults.model
        price = providers[provider].settings.prices.get(model) or settings.prices.get(model)
        if price is None and (merged["quota"].usd_per_day or merged["user_quota"].usd_per_day):
            issue(
                loc,
                f"bot {bot.name!r} has a daily spend limit (usd_per_day) but no price for its model {model!r}; "
                f"add one under 'prices:' (top level, or under provider {provider!r}), e.g. "
                f"prices: {{{model}: {{input: 0.15, output: 0.60}}}} (USD per million tokens)",
            )
            continue
        bots[bot.name] = BotSpec(
            name=bot.name,
            token=SecretStr(token),
            persona=bot.persona.strip(),
            description=_describe(bot),
            provider=provider,
            model=model,
            price=price,
            prefix=bot.prefix or defaults.prefix,
            weight=bot.weight,
            stream=defaults.stream if bot.stream is None else bot.stream,
            mailbox_size=bot.mailbox_size or defaults.mailbox_size,
            concurrency=bot.concurrency or defaults.concurrency,
            message_content=defaults.message_content if bot.message_content is None else bot.message_content,
            image_model=bot.image_model or defaults.image_model,
            image_size=bot.image_size or defaults.image_size,
            **merged,
        )
    database = _database(settings, env, secrets, base_dir, issue)
    if database is not None and (problem := fleet_needs_postgres(settings.fleet, database)):
        issue(("fleet",), problem)
    fleet = _resolve_fleet(settings.fleet, secrets, issue) if settings.fleet is not None else None
    if issues or database is None:
        raise ConfigError(issues)

    discord_settings = settings.discord.model_copy(
        update={
            "api_url": env.get("DISCORD_API_URL") or settings.discord.api_url,
            "gateway_url": env.get("DISCORD_GATEWAY_URL") or settings.discord.gateway_url,
        }
    )
    warnings = [str(located(bot_locs[second], message)) for second, message in _overlaps(list(bots.values()))]
    warnings += [
        str(
            located(
                _message_content_loc(settings, bot_locs[spec.name]),
                _WITHOUT_MESSAGE_CONTENT.format(bot=spec.name, prefix=spec.prefix),
            )
        )
        for spec in bots.values()
        if not spec.message_content
    ]
    if "://" in settings.database and PostgresURL(SecretStr(settings.database)).has_password:
        warnings.append(
            str(
                located(
                    ("database",),
                    (
                        "the database URL in bots.yaml carries a password; put the URL in .env "
                        "(e.g. DATABASE_URL=postgresql://...) and write 'database_env: DATABASE_URL'"
                    ),
                )
            )
        )
    return Config(
        path=Path(name),
        discord=discord_settings,
        providers=providers,
        bots=bots,
        database=database,
        health_port=settings.health_port,
        restart=settings.restart,
        warnings=warnings,
        fleet=fleet,
    )


def _database(
    settings: FileSettings,
    env: Mapping[str, str],
    secrets: _SecretSource,
    base_dir: Path,
    issue: Callable[[tuple[Any, ...], str], None],
) -> Path | PostgresURL | None:
    """Where memory lives: ORCHESTRATOR_DATABASE, else the variable ``database_env`` names, else
    ``database``; a postgresql:// URL or a SQLite path (relative to bots.yaml). None after an issue."""
    value = env.get("ORCHESTRATOR_DATABASE") or settings.database
    loc: tuple[Any, ...] = ("database",)
    if settings.database_env is not None and not env.get("ORCHESTRATOR_DATABASE"):
        loc = ("database_env",)
        if "database" in settings.model_fields_set:
            issue(loc, "set either 'database' or 'database_env', not both")
            return None
        if not _ENV_NAME.fullmatch(settings.database_env):
            issue(loc, _NOT_A_NAME)
            return None
        value = env.get(settings.database_env, "")
        if not value:
            issue(loc, secrets.not_set(settings.database_env, "the database's postgresql:// URL (or a SQLite file)"))
            return None
    scheme = value.split("://", 1)[0].lower() if "://" in value else None
    if scheme in _POSTGRES_SCHEMES:
        try:
            urlsplit(value).port  # noqa: B018 - raises for a port that is not one
        except ValueError:
            issue(loc, "the database URL's port must be a number from 0 to 65535")
            return None
        return PostgresURL(SecretStr(value))
    if scheme is not None:  # never echo the value: it may carry a password
        issue(loc, f"the database must be a SQLite file path or a postgresql:// URL, not a {scheme}:// URL")
        return None
    database = Path(value)
    if not database.is_absolute() and str(database) != ":memory:":
        database = base_dir / database
    return database


def fleet_needs_postgres(fleet: FleetSettings | None, database: Path | PostgresURL) -> str | None:
    """Why ``fleet:`` cannot work with ``database``, if it cannot: the nodes of a fleet must share
    their memory, and a SQLite file belongs to one machine."""
    if fleet is None or isinstance(database, PostgresURL):
        return None
    return (
        f"a fleet needs PostgreSQL: its nodes share memory, and SQLite ({database.name}) is a file on one "
        "machine; set 'database_env' (or 'database') to a postgresql:// URL"
    )


_REDIS_SCHEMES = ("redis", "rediss", "unix")
_NODE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def _resolve_fleet(
    fleet: FleetSettings, secrets: _SecretSource, issue: Callable[[tuple[Any, ...], str], None]
) -> FleetSpec | None:
    """The fleet section with its Redis URL read from the file or the environment."""
    loc = ("fleet",)
    url = ""
    if (fleet.redis_url is None) == (fleet.redis_url_env is None):
        issue(
            loc,
            "fleet needs the Redis server: set either 'redis_url' (e.g. redis://10.0.0.5:6379/0) or "
            "'redis_url_env' (the name of an environment variable holding it, for a URL with a password)",
        )
        return None
    if fleet.redis_url is not None:
        url = fleet.redis_url
        if urlsplit(url).password is not None:  # never echo it
            issue(
                (*loc, "redis_url"),
                "this URL has a password, which does not belong in bots.yaml: put the URL in "
                "the environment or in the .env beside bots.yaml and write the variable's name under 'redis_url_env'",
            )
            return None
    elif fleet.redis_url_env is not None and not _ENV_NAME.fullmatch(fleet.redis_url_env):
        issue((*loc, "redis_url_env"), _NOT_A_NAME)
        return None
    elif fleet.redis_url_env is not None:
        url = secrets.env.get(fleet.redis_url_env, "")
        if not url and secrets.require_redis:
            issue((*loc, "redis_url_env"), secrets.not_set(fleet.redis_url_env, "the Redis URL of the fleet"))
            return None
    where = (*loc, "redis_url" if fleet.redis_url is not None else "redis_url_env")
    if url and urlsplit(url).scheme not in _REDIS_SCHEMES:
        scheme = urlsplit(url).scheme or "no scheme"
        issue(where, f"the Redis URL must start with redis://, rediss:// or unix://, not {scheme}://")
        return None
    try:
        if url:
            parse_redis_url(url)
    except ValueError as exc:  # its message names the part, never the password
        issue(where, f"not a valid Redis URL: {exc}")
        return None
    node_id = secrets.env.get("ORCHESTRATOR_NODE_ID") or fleet.node_id or f"{socket.gethostname()}-{os.getpid()}"
    if not _NODE_ID.fullmatch(node_id):
        issue(
            (*loc, "node_id"),
            f"node id {node_id[:100]!r} (from ORCHESTRATOR_NODE_ID, node_id or the host name) "
            "must be 1-100 letters, digits and . _ : -; set node_id or ORCHESTRATOR_NODE_ID",
        )
        return None
    return FleetSpec(SecretStr(url), node_id, fleet.lease_ttl, fleet.key_prefix)


def _describe(bot: BotSettings, limit: int = 200) -> str:
    if bot.description and bot.description.strip():
        return " ".join(bot.description.split())
    first = bot.persona.strip().split("\n", 1)[0].strip()
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def _unknown_provider(provider: str, providers: Mapping[str, ProviderSpec]) -> str:
    close = difflib.get_close_matches(provider, list(providers), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"provider {provider!r} is not defined under 'providers:'{hint}"


_WITHOUT_MESSAGE_CONTENT = (
    "bot {bot!r} runs without the Message Content intent (message_content: false): in channels Discord shows it "
    "only messages that @mention it or reply to it, so '{prefix}chat' and its other prefix commands work there "
    "only with an @mention of the bot; in DMs they work as usual"
)


def _message_content_loc(settings: FileSettings, bot_loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Where a bot's ``message_content`` is set: on the bot, else under ``defaults``."""
    if settings.bots[bot_loc[1]].message_content is not None:
        return (*bot_loc, "message_content")
    return ("defaults", "message_content")


def _overlaps(bots: list[BotSpec]) -> list[tuple[str, str]]:
    """Pairs of bots that would both answer the same command in the same place, as (the second
    bot's name, a warning). A bot without message content reads no prefix commands in channels."""
    found = []
    for i, first in enumerate(bots):
        for second in bots[i + 1 :]:
            if first.prefix != second.prefix or not (first.message_content and second.message_content):
                continue
            if _disjoint(first.access.channels, second.access.channels) or _disjoint(
                first.access.guilds, second.access.guilds
            ):
                continue
            found.append(
                (
                    second.name,
                    f"bots {first.name!r} and {second.name!r} both answer '{first.prefix}chat' where their channels "
                    f"overlap; give one of them another 'prefix' or disjoint 'access.channels'",
                )
            )
    return found


def _disjoint(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return bool(a) and bool(b) and not set(a) & set(b)

"""Settings: built-in providers, ~/.config/lic/config.toml, per-project .lic/config.toml, flags.

Precedence, lowest first: built-in defaults < user config < project config < command line.
A config file may set any of the top-level keys below and define or tweak providers:

    provider = "deepseek"            # or "local", or a name defined below
    permission_mode = "ask"
    [providers.vllm]
    base_url = "http://127.0.0.1:8001/v1"
    model = "Qwen/Qwen2.5-Coder-7B-Instruct"
    api_key_env = "VLLM_KEY"
    price_input = 0.0                # USD per million tokens, for the cost display
    price_cached_input = 0.0         # prompt tokens served from the provider's cache
    price_output = 0.0
    context_window = 32768

The default provider is `deepseek` when DEEPSEEK_API_KEY is set, else `local` (our own
`dsv4 serve` on 127.0.0.1:8000, which `lic` connects to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from dsv4.errors import UserError
from dsv4.lic.permissions import MODES

BUILTIN_PROVIDERS = {
    # DeepSeek API prices for deepseek-chat, USD per 1M tokens: input (cache miss), cache hit, output.
    "deepseek": {
        "base_url": "https://api.deepseek.com",
        "model": "deepseek-chat",
        "api_key_env": "DEEPSEEK_API_KEY",
        "price_input": 0.28,
        "price_cached_input": 0.028,
        "price_output": 0.42,
        "context_window": 128_000,
    },
    # Our `dsv4 serve`; model None = ask the server's /v1/models.
    "local": {
        "base_url": "http://127.0.0.1:8000/v1",
        "model": None,
        "api_key_env": None,
        "price_input": 0.0,
        "price_output": 0.0,
        "context_window": 8_192,
    },
}
PROVIDER_KEYS = (
    "base_url",
    "model",
    "api_key_env",
    "price_input",
    "price_cached_input",
    "price_output",
    "context_window",
)


@dataclass
class Settings:
    provider: str = "local"
    base_url: str = ""
    model: str | None = None
    api_key_env: str | None = None
    price_input: float = 0.0
    price_output: float = 0.0
    price_cached_input: float | None = None  # None: same as price_input
    context_window: int = 8_192
    permission_mode: str = "ask"
    allow_network: bool = False
    max_turns: int = 50
    shell_timeout: float = 120.0
    stream: bool = True
    compact_ratio: float = 0.75  # compact when the context estimate passes this share of the window

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "lic"


def data_home() -> Path:
    if os.environ.get("LIC_HOME"):
        return Path(os.environ["LIC_HOME"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "lic"


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise UserError(f"cannot read config {path}: {e}") from None


def _type_ok(value, declared: str) -> bool:
    """Check `value` against a field's declared type (a string: `from __future__ import annotations`)."""
    if value is None:
        return "None" in declared
    if isinstance(value, bool):
        return declared == "bool"
    if declared.startswith("float"):
        return isinstance(value, (int, float))
    if declared == "int":
        return isinstance(value, int)
    return isinstance(value, str)


def load_settings(workspace: Path, cli: dict) -> Settings:
    """Merge defaults, user config, project config and the non-None `cli` values."""
    layers = [_read_toml(config_home() / "config.toml"), _read_toml(workspace / ".lic" / "config.toml")]
    providers = {k: dict(v) for k, v in BUILTIN_PROVIDERS.items()}
    top: dict = {}
    for layer in layers:
        for name, conf in (layer.get("providers") or {}).items():
            if not isinstance(conf, dict):
                raise UserError(f"config: [providers.{name}] must be a table")
            bad = set(conf) - set(PROVIDER_KEYS)
            if bad:
                raise UserError(
                    f"config: [providers.{name}] has unknown key(s) {', '.join(sorted(bad))}; "
                    f"known: {', '.join(PROVIDER_KEYS)}"
                )
            providers.setdefault(name, {k: None for k in PROVIDER_KEYS}).update(conf)
        top.update({k: v for k, v in layer.items() if k != "providers"})
    top.update({k: v for k, v in cli.items() if v is not None})

    if cli.get("base_url") and not cli.get("provider"):
        # A bare --base-url is its own provider: never send a named provider's key elsewhere.
        name = "custom"
        providers[name] = {"model": None, "api_key_env": None, "context_window": 32_768}
    else:
        name = top.get("provider") or ("deepseek" if os.environ.get("DEEPSEEK_API_KEY") else "local")
    if name not in providers:
        raise UserError(
            f"unknown provider {name!r}; known: {', '.join(sorted(providers))} (or pass --base-url)"
        )
    merged = {**providers[name], **{k: top[k] for k in PROVIDER_KEYS if top.get(k) is not None}}
    merged = {k: v for k, v in merged.items() if v is not None}  # unset keys keep Settings' defaults
    known = {f.name for f in fields(Settings)}
    unknown = set(top) - known
    if unknown:
        raise UserError(f"config: unknown setting(s) {', '.join(sorted(unknown))}")
    s = Settings(**{**{k: v for k, v in top.items() if k in known}, **merged, "provider": name})
    for f in fields(Settings):  # a wrongly typed value is a config error now, not a crash later
        if not _type_ok(getattr(s, f.name), f.type):
            raise UserError(f"config: {f.name} = {getattr(s, f.name)!r} should be of type {f.type}")
    if not s.base_url:
        raise UserError(f"provider {name!r} has no base_url")
    if s.permission_mode not in MODES:
        raise UserError(f"unknown permission mode {s.permission_mode!r}; choose one of {', '.join(MODES)}")
    return s

"""The service's Lua scripts: one file each in core/lua/, read once and run with EVALSHA.

A script is `core/lua/<module>_<name>.lua`, named after the module that runs it (`jobs_record.lua`
for core/jobs.py). Its header says what its KEYS and ARGV are and what it returns, and it names
every KEYS[i]/ARGV[i] in locals at its top. A script that answers more than one value answers a
JSON object (`cjson.encode`), decoded here by the caller.

The loader does two things to a file's text, both at load time (once per process and script):
- `-- #include <file>.lua`, a line of its own, is replaced by `core/lua/lib/<file>.lua`: code
  that several scripts share (the metrics' `observe`, a job's close, the quota give-back) is
  written once. A file included twice into one script is included once.
- `${NAME}` is replaced by the value the caller passes as `NAME=...`: constants that Python owns
  (the metrics buckets, core/metrics.py `LUA_VALUES`), written into the script rather than sent
  with every call. A placeholder without a value, or a value without a placeholder, is an error.

`register(client, name)` is redis-py's `register_script`: the script is sent once per Redis
(EVALSHA, loaded again on NOSCRIPT after a Redis restart).
"""

import re
from functools import lru_cache
from pathlib import Path

import redis
from redis.commands.core import Script

LUA_DIR = Path(__file__).with_name("lua")
LIB_DIR = LUA_DIR / "lib"
_INCLUDE = re.compile(r"^-- #include (?P<file>[a-z_]+\.lua)[ \t]*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\$\{(?P<name>[A-Z][A-Z0-9_]*)\}")


def _expand(text: str, seen: set[str]) -> str:
    """`text` with its includes expanded (recursively; each file once)."""

    def include(match: re.Match[str]) -> str:
        file = match["file"]
        if file in seen:
            return f"-- ({file} included above)"
        seen.add(file)
        body = _expand((LIB_DIR / file).read_text(), seen)
        return f"-- >>> {file}\n{body.rstrip()}\n-- <<< {file}"

    return _INCLUDE.sub(include, text)


def _substitute(name: str, text: str, values: dict[str, str]) -> str:
    wanted = {m["name"] for m in _PLACEHOLDER.finditer(text)}
    if wanted != values.keys():
        raise ValueError(
            f"{name}.lua: placeholders {sorted(wanted)} but values for {sorted(values)} (core/scripts.py)"
        )
    return _PLACEHOLDER.sub(lambda m: values[m["name"]], text)


@lru_cache
def _source(name: str, values: tuple[tuple[str, str], ...]) -> str:
    text = _expand((LUA_DIR / f"{name}.lua").read_text(), set())
    return _substitute(name, text, dict(values))


def source(name: str, **values: object) -> str:
    """The text of `core/lua/<name>.lua`, includes expanded and `${NAME}`s replaced by `values`."""
    return _source(name, tuple(sorted((key, str(value)) for key, value in values.items())))


def register(client: redis.Redis, name: str, **values: object) -> Script:
    """The script `name` on `client`: call it with `keys=` and `args=`."""
    return client.register_script(source(name, **values))

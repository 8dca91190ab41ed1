"""The transpile cache: a hit equals a fresh transpilation; a bad cache never breaks a query."""

from __future__ import annotations

from pathlib import Path

import pytest

from athena import queries, sqlcache
from tests.athena.test_queries import COMMON


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOGQ_CACHE_DIR", str(tmp_path / "c"))
    return tmp_path / "c"


def test_hit_equals_fresh_and_binds_new_values(cache: Path) -> None:
    text = queries.load("errors").text
    fresh = queries.to_duckdb(text, COMMON)
    assert len(list(cache.glob("*.json"))) == 1
    again = queries.to_duckdb(text, COMMON)
    assert again == fresh
    other = queries.to_duckdb(text, {**COMMON, "services": ["x' OR '1'='1"], "row_limit": 3})
    assert other[0] == fresh[0]
    assert other[1]["services__0"] == "x' OR '1'='1" and other[1]["row_limit"] == 3
    assert "x' OR" not in next(cache.glob("*.json")).read_text()  # values never cached


def test_list_shape_is_part_of_the_key(cache: Path) -> None:
    text = queries.load("errors").text
    one = queries.to_duckdb(text, COMMON)
    two = queries.to_duckdb(text, {**COMMON, "services": ["a", "b"]})
    assert "$services__1" in two[0] and "$services__1" not in one[0]
    assert len(list(cache.glob("*.json"))) == 2


def test_corrupt_and_unwritable_cache_are_ignored(cache: Path, monkeypatch) -> None:
    text = queries.load("latency").text
    fresh = queries.to_duckdb(text, COMMON)
    for f in cache.glob("*.json"):
        f.write_text("{not json")
    assert queries.to_duckdb(text, COMMON) == fresh
    blocker = cache.parent / "file"
    blocker.write_text("")
    monkeypatch.setenv("LOGQ_CACHE_DIR", str(blocker / "sub"))
    assert queries.to_duckdb(text, COMMON) == fresh
    assert sqlcache.get("missing") is None


def test_adhoc_sql_is_never_cached(cache: Path) -> None:
    sql, _ = queries.to_duckdb("SELECT secret_value FROM envoy_access", {})
    assert "secret_value" in sql
    assert not cache.exists() or not list(cache.glob("*.json"))


def test_no_home_directory_means_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container run with an arbitrary ``--user`` has no $HOME and no passwd entry: the CLI
    answered with a RuntimeError traceback from Path.home() instead of skipping the cache."""
    import pwd

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    for var in ("LOGQ_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert sqlcache.cache_dir() is None
    text = queries.load("errors").text
    sql, bound = queries.to_duckdb(text, COMMON)
    assert "$services__0" in sql and bound["services__0"] == COMMON["services"][0]
    assert sqlcache.get("missing") is None


def test_the_key_changes_with_sqlglots_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlglot's part of the key is read from its ``_version.py`` (no path-wide metadata search):
    a new sqlglot release means new keys; without that file (a source checkout) the installed
    distribution's version is used."""
    import importlib.metadata
    import importlib.util
    from importlib.machinery import ModuleSpec

    package = tmp_path / "sqlglot"
    package.mkdir()
    spec = ModuleSpec("sqlglot", None, origin=str(package / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    keys = []
    for release in ("30.31.0", "30.32.0"):
        (package / "_version.py").write_text(f"__version__ = version = {release!r}\n")
        keys.append(sqlcache.key("SELECT 1"))
    assert keys[0] != keys[1]
    (package / "_version.py").unlink()
    assert sqlcache.key("SELECT 1") not in keys
    assert sqlcache._sqlglot_version() == importlib.metadata.version("sqlglot")


@pytest.mark.parametrize("module", ["trinotypes.py", "schema.py"])
def test_the_key_changes_with_the_modules_that_type_values(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewrites read the types of values off the tree (athena/trinotypes.py) and the
    tables' column types (athena/schema.py): a canned query's SQL changes with them, so its
    cached text must not outlive a change to either (the key hashed the other transpile
    modules only)."""
    before = sqlcache.key("SELECT 1")
    real = Path.read_bytes

    def changed(path: Path) -> bytes:
        return real(path) + (b"\n# changed\n" if path.name == module else b"")

    monkeypatch.setattr(Path, "read_bytes", changed)
    assert sqlcache.key("SELECT 1") != before

"""Keeping chosen sources out: ``--exclude PATTERN`` and the container label ``logq.exclude``.

What Fluent Bit users do with the tail input's ``Exclude_Path`` and the Kubernetes filter's
``fluentbit.io/exclude`` annotation, and Fluentd users with ``<exclude>`` / grep filters: the
shipper's own container, a noisy debug sidecar or a container that logs secrets is never read.

A pattern is a shell glob (:func:`fnmatch.fnmatchcase`: case-sensitive, ``*`` also matches
``/``, as in ``Exclude_Path``) matched against three things of a source, any match excluding it:

* its service name (the ``service`` column),
* its container name (the ``container_name`` column: Docker's name, the ECS task definition's
  container name, ``<namespace>/<pod>/<container>`` on Kubernetes, the file name of a
  ``--path`` file),
* the path of its live log file (``<docker-root>/<id>/<id>-json.log``,
  ``/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log``, a ``--path`` file made
  absolute) and, for a pod log, the path of kubelet's ``/var/log/containers`` symlink to it
  (so Fluent Bit's ``Exclude_Path`` patterns work), also before that link exists
  (:func:`kubelet_link_paths`): kubelet makes it only after the container started, and the
  first lines must not slip out meanwhile.

Like Fluent Bit's ``Exclude_Path``, one value may list several patterns separated by commas
(:func:`split_patterns`). A file excluded by any route (a Docker root, a CRI root, a ``--path``
glob) is excluded by every route that finds it (:mod:`shipper.discover`).

A Docker container (ECS and Compose ones too) with the label ``logq.exclude=true`` is excluded
as well. Kubernetes pods cannot be labelled this way: the shipper reads the kubelet's files,
which carry no pod labels or annotations.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("logq.shipper.discover")

LABEL_EXCLUDE = "logq.exclude"
#: Label values that exclude (lower-cased), and those that say "ship it"; any other value is
#: warned about once (a typo must not go unnoticed when the container logs secrets).
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0", ""})


class Exclusion(NamedTuple):
    """Why a source is kept out (the fields of its INFO line)."""

    matched: str
    """What matched: ``label``, ``service``, ``container_name`` or ``path``."""
    rule: str
    """The ``--exclude`` pattern, or ``logq.exclude=<value>`` for the label."""


#: A comma outside ``[...]``: Fluent Bit's list separator (``[,]`` matches a comma).
_COMMA = re.compile(r",(?![^\[\]]*\])")


def split_patterns(value: str) -> list[str]:
    """The patterns of one ``--exclude`` value: Fluent Bit's ``Exclude_Path *.gz,*.zip`` is a
    comma-separated list, and taken whole it was one glob that matched nothing, silently.
    Items are stripped of spaces (``a, b``); a comma inside brackets (``[,]``) stays a
    character to match. Empty items are kept, for the caller to refuse."""
    return [item.strip() for item in _COMMA.split(value)]


LINK_ID_PLACEHOLDER = "0" * 64
"""The container id in :func:`kubelet_link_paths` (64 hex digits, as kubelet writes)."""


def kubelet_link_paths(
    folders: Iterable[str], namespace: str, pod: str, container: str
) -> list[str]:
    """The paths, in each of ``folders``, of the symlink kubelet makes to the pod log of
    ``container`` of ``pod`` in ``namespace`` (``<pod>_<namespace>_<container>-<id>.log``).

    The container id is in no file the shipper reads, so :data:`LINK_ID_PLACEHOLDER` stands
    for it: a pattern that depends on the id (which changes at every restart) is honoured only
    once the link exists."""
    name = f"{pod}_{namespace}_{container}-{LINK_ID_PLACEHOLDER}.log"
    return [f"{folder.rstrip('/')}/{name}" for folder in folders]


class Excluder:
    """The ``--exclude`` patterns, compiled once: discovery asks about every source at every
    pass (a thousand containers, three strings each), so one regular expression tells whether
    any pattern matches, and only a match looks for which one did (rare: once a source)."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(p for value in patterns for p in split_patterns(value) if p)
        self._any = (
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns))
            if self.patterns
            else None
        )
        self._bad_labels: set[tuple[str, str]] = set()
        """(source key, label value) already warned about as neither true nor false."""

    def __bool__(self) -> bool:
        return self._any is not None

    def check(
        self,
        key: str,
        fields: Mapping[str, str],
        paths: Iterable[Path | str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> Exclusion | None:
        """Why the source ``key`` is excluded, or None.

        ``fields`` maps ``service`` / ``container_name`` to their values, ``paths`` are the
        live file's paths (and kubelet links), ``labels`` the Docker container's labels (None
        elsewhere)."""
        if labels is not None:
            by_label = self._label(key, labels)
            if by_label is not None:
                return by_label
        if self._any is None:
            return None
        candidates = [*fields.items(), *(("path", str(p)) for p in paths)]
        for what, value in candidates:
            if value and self._any.match(value):
                return Exclusion(what, self._which(value))
        return None

    def retain(self, keys: Collection[str]) -> None:
        """Forget the label warnings of sources other than ``keys`` (those found now): a host
        churning containers must not grow this set for ever."""
        if self._bad_labels:
            self._bad_labels = {kv for kv in self._bad_labels if kv[0] in keys}

    def _which(self, value: str) -> str:
        return next(p for p in self.patterns if fnmatch.fnmatchcase(value, p))

    def _label(self, key: str, labels: Mapping[str, str]) -> Exclusion | None:
        value = labels.get(LABEL_EXCLUDE)
        if value is None:
            return None
        word = value.strip().lower()
        if word in _TRUE:
            return Exclusion("label", f"{LABEL_EXCLUDE}={value}")
        if word not in _FALSE and (key, value) not in self._bad_labels:
            self._bad_labels.add((key, value))
            log.warning(
                "label %s is neither true nor false: the container is shipped; write "
                "%s=true to keep it out key=%s value=%r",
                LABEL_EXCLUDE,
                LABEL_EXCLUDE,
                key,
                value,
            )
        return None

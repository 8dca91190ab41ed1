"""Well-known metadata of other Forward clients -> the record keys logq reads.

logq-shipper sends ``stream``, ``service``, ``container_id``, ``container_name``, ``host`` and
``image`` at the top level of every record. Stock clients carry the same facts under their own
keys, and without this mapping their lines land under the tag's last part as service, with no
stream and no Envoy parsing:

* Fluent Bit's ``kubernetes`` filter: a ``kubernetes`` map (``pod_name``, ``host``,
  ``container_name``, ``docker_id``, ``container_image``, ``labels``, ``annotations``, ``pod_id``);
* ECS FireLens: ``ecs_task_definition`` (``family:revision``) and ``source`` (the stream);
* Docker's fluentd log driver: ``source`` and ``container_name`` as Docker's API gives it
  (``/recipe-1``).

Only keys that a record *lacks* are filled (absent, not nil: a logq-shipper record has them all
and never reaches this module), so a client's own top-level ``service`` or ``host`` still wins.
A key whose value logq cannot use counts as lacking (:func:`present_keys`): a ``service``,
``host`` or other metadata value that is not text (``42``, ``{"name": "orders"}`` from an ECS
logging app under ``Merge_Log On``), a ``stream`` that is no stream (``console``).
The service follows the shipper's rules (DESIGN.md §2): the ECS task-definition family, else the
``logq.service`` pod label, else the pod's owner name by :func:`shipper.discover.pod_owner_name`;
a record still without one takes the tag's last part later (``aggregator.batch.service_column``).

Hostile shapes (``kubernetes`` not a map, ``labels`` not a map, values that are not strings,
absurdly long pod names) count as absent: they never raise and never cost more than a lookup.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Container, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from shipper import wire
from shipper.discover import names_service, node_names, pod_owner_name

KEY_SOURCE = "source"
KEY_KUBERNETES = "kubernetes"
KEY_ECS_TASK_DEFINITION = "ecs_task_definition"
#: Record keys that carry client metadata; a record with none of them is left as it is.
CLIENT_KEYS = (KEY_SOURCE, KEY_KUBERNETES, KEY_ECS_TASK_DEFINITION)
#: Keys of the ``kubernetes`` map that are read (all strings).
KUBE_FIELDS = (
    "pod_name",
    "host",
    "container_name",
    "docker_id",
    "container_image",
    "pod_id",
    "namespace_name",
)
LABEL_SERVICE = "logq.service"
#: Set by the kubelet on a static pod (and its mirror): the uid its log folder is named after.
ANNOTATION_CONFIG_HASH = "kubernetes.io/config.hash"
#: The two values of the ``stream`` column (DESIGN.md).
STREAMS = frozenset(("stdout", "stderr"))
#: The record keys that :func:`fills` may fill: metadata read only when it is text.
FILLABLE_KEYS = (
    wire.KEY_STREAM,
    wire.KEY_SERVICE,
    wire.KEY_CONTAINER_ID,
    wire.KEY_CONTAINER_NAME,
    wire.KEY_HOST,
    wire.KEY_IMAGE,
)
_FILLABLE = frozenset(FILLABLE_KEYS)
_STREAM_VALUES = frozenset((*STREAMS, None))
_TEXT_TYPES = frozenset((str, type(None)))
#: Kubernetes object names are DNS subdomains (<= 253 characters): a longer "pod name" is not
#: one, and is not handed to the owner-name regexes.
_MAX_POD_NAME = 253
_MAX_UID = 64
_SHORT_ID = 12
#: The parts of Docker's name of an ECS container, as the ECS agent makes it:
#: ``ecs-<family>-<revision>-<container name, letters digits and - only>-<random hex>``, the
#: random part 20 hex digits (the agent's ``RandHex``: 10 bytes): a name without one whose
#: last word reads as hex (``web-cafe``) is not cut there.
_DIGITS = re.compile(r"[0-9]+")
_ECS_CONTAINER = re.compile(r"[A-Za-z0-9-]+")
_HEX = re.compile(r"[0-9a-f]{20}")


@dataclass(frozen=True, slots=True)
class Kube:
    """The strings of a Fluent Bit ``kubernetes`` map that logq reads (None: absent or not text)."""

    pod_name: str | None = None
    host: str | None = None
    container_name: str | None = None
    docker_id: str | None = None
    container_image: str | None = None
    pod_id: str | None = None
    namespace_name: str | None = None
    label_service: str | None = None
    config_hash: str | None = None

    @property
    def qualified_container_name(self) -> str | None:
        """``<namespace>/<pod>/<container>``, as logq-shipper names a Kubernetes container
        (one name tells namespaces and pods apart), else the bare container name."""
        if self.namespace_name and self.pod_name and self.container_name:
            return f"{self.namespace_name}/{self.pod_name}/{self.container_name}"
        return self.container_name

    @property
    def service(self) -> str | None:
        """``labels["logq.service"]``, else the pod's owner name, else None."""
        if names_service(self.label_service):  # an empty or blank label: the next rule
            return self.label_service
        if self.pod_name and len(self.pod_name) <= _MAX_POD_NAME:
            # Cut to what a node name and a uid can be: the cache below never holds big keys.
            uid = (self.config_hash or self.pod_id or "")[:_MAX_UID]
            return _owner(self.pod_name, (self.host or "")[:_MAX_POD_NAME], uid)
        return None


@functools.lru_cache(maxsize=4096)
def _owner(pod: str, host: str, uid: str) -> str:
    # A static pod is named ``<name>-<node>``: the node is the map's ``host``. Its log folder
    # (what the shipper reads) is named after the config hash, which Fluent Bit gives as an
    # annotation (``pod_id`` is the API server's mirror-pod uid).
    return pod_owner_name(pod, node_names(host), uid)


def stream_of(value: object) -> str | None:
    """``stdout`` or ``stderr`` of a ``stream`` (or Docker's ``source``) value in any case
    (``STDERR`` is ``stderr``; sent as ``bin`` too), else None: the column holds only those two
    (DESIGN.md), so ``console`` or a number is no stream."""
    if type(value) is bytes:
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    if value in STREAMS:
        return value
    lowered = value.lower() if value.isascii() else ""
    return lowered if lowered in STREAMS else None


def is_metadata(key: str, value: object) -> bool:
    """Whether a record's ``value`` of metadata ``key`` is one logq reads: text (``bin``
    too), nil (which keeps the key's column NULL), and for ``stream`` a stream
    (:func:`stream_of`). Any other value is ignored, as if the key were absent."""
    if value is None:
        return True
    if key == wire.KEY_STREAM:
        return stream_of(value) is not None
    return type(value) is str or type(value) is bytes  # not an EventTime's ext bytes


def present_keys(record: dict[Any, Any]) -> Set[str]:
    """The :data:`FILLABLE_KEYS` of ``record`` whose values logq reads (:func:`is_metadata`):
    the ``present`` of :func:`fills`. (The keys it has first, by one C-level intersection: a
    Fluent Bit record has few of them, often only ``stream``; then their values, in a loop
    that calls nothing for the usual ones.)"""
    present = _FILLABLE.intersection(record)
    for key in present:  # the usual values (text; a stream's stdout or stderr) at little cost
        value = record[key]
        if type(value) is not str or (key == wire.KEY_STREAM and value not in STREAMS):
            return frozenset(k for k in present if is_metadata(k, record[k]))
    return present


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _get_str(mapping: object, key: str) -> str | None:
    return _str(mapping.get(key)) if isinstance(mapping, dict) else None


def kube_of(value: object) -> Kube | None:
    """The :class:`Kube` of a decoded ``kubernetes`` value (None unless it is a map)."""
    if not isinstance(value, dict):
        return None
    return Kube(
        *(_str(value.get(k)) for k in KUBE_FIELDS),
        label_service=_get_str(value.get("labels"), LABEL_SERVICE),
        config_hash=_get_str(value.get("annotations"), ANNOTATION_CONFIG_HASH),
    )


def family_of(task_definition: object) -> str | None:
    """``recipe`` from FireLens's ``ecs_task_definition`` ``recipe:12`` (text before the last
    ``:``): the label ``com.amazonaws.ecs.task-definition-family`` the shipper reads."""
    text = _str(task_definition)
    if text is None:
        return None
    return _str(text.rpartition(":")[0] if ":" in text else text)


def ecs_container_name(name: str, task_definition: object) -> str:
    """The task definition's container name (``app``) of Docker's name for an ECS container,
    ``ecs-<family>-<revision>-<container>-<hex>`` (the ECS agent's, new at every task), when the
    record's ``ecs_task_definition`` (``family:revision``, or the family alone from Fluent Bit's
    ecs filter) names that task; else ``name`` unchanged. logq-shipper reads the same name from
    the label ``com.amazonaws.ecs.container-name``, so a container keeps one ``container_name``
    whichever sends its lines. (The agent drops characters other than letters, digits and
    ``-`` from the container's name: ``my_app`` comes back as ``myapp``.)"""
    text = _str(task_definition)
    if text is None or not name.startswith("ecs-"):
        return name
    family, colon, revision = text.rpartition(":") if ":" in text else (text, "", "")
    prefix = f"ecs-{family}-"
    if not family or not name.startswith(prefix):
        return name
    sent_revision, _, rest = name[len(prefix) :].partition("-")
    container, _, random = rest.rpartition("-")
    if (
        not _DIGITS.fullmatch(sent_revision)
        or (colon and sent_revision != revision)
        or not _ECS_CONTAINER.fullmatch(container)
        or not _HEX.fullmatch(random)
    ):
        return name
    return container


def fills(
    present: Container[str],
    source: object,
    kube: Kube | None,
    task_definition: object,
    container_name: object,
    container_id: object = None,
    tag: str = "",
) -> dict[str, str]:
    """The values to put in a record's lacking keys (``present`` holds the keys it has).

    A record whose stream comes from ``source`` (Docker's fluentd log driver, FireLens on EC2)
    also loses Docker's leading ``/`` of ``container_name``; when its tag is Docker's default
    (the short container id, which names no service), its service is that container name:
    the shipper's last rule for a container without labels.
    """
    out: dict[str, str] = {}
    stream = stream_of(source)
    name = _str(container_name)
    if stream is not None and wire.KEY_STREAM not in present:
        out[wire.KEY_STREAM] = stream
        if name is not None and name.startswith("/"):
            name = out[wire.KEY_CONTAINER_NAME] = name[1:]
    if name is not None and task_definition is not None:
        ecs_name = ecs_container_name(name, task_definition)
        if ecs_name != name:
            out[wire.KEY_CONTAINER_NAME] = ecs_name
    if wire.KEY_SERVICE not in present:
        service = family_of(task_definition) or (kube.service if kube else None)
        if not service and stream is not None and _is_short_id(tag, container_id):
            service = name
        if service:
            out[wire.KEY_SERVICE] = service
    if kube is not None:
        for key, value in (
            (wire.KEY_CONTAINER_NAME, kube.qualified_container_name),
            (wire.KEY_CONTAINER_ID, kube.docker_id),
            (wire.KEY_HOST, kube.host),
            (wire.KEY_IMAGE, kube.container_image),
        ):
            if value and key not in present:
                out[key] = value
    return out


def _is_short_id(tag: str, container_id: object) -> bool:
    """Whether ``tag`` is Docker's default fluentd tag ``{{.ID}}``: the container id's first 12."""
    return (
        len(tag) == _SHORT_ID and isinstance(container_id, str) and container_id[:_SHORT_ID] == tag
    )


def has_client_keys(record: dict[Any, Any]) -> bool:
    """Whether a decoded record carries any of :data:`CLIENT_KEYS`."""
    return KEY_SOURCE in record or KEY_KUBERNETES in record or KEY_ECS_TASK_DEFINITION in record


def usual_values(columns: Mapping[str, Sequence[object]]) -> bool:
    """Whether the :data:`FILLABLE_KEYS` columns of some records (all of them, a key's value or
    None per record) hold only text or nil, and streams only ``stdout`` or ``stderr``: then the
    keys a record has are those :func:`present_keys` would give (whole columns checked in C,
    rather than each record in Python)."""
    try:
        if not _STREAM_VALUES.issuperset(columns[wire.KEY_STREAM]):
            return False
    except TypeError:  # an unhashable value (a map): not a stream
        return False
    return all(
        _TEXT_TYPES.issuperset(map(type, columns[key]))
        for key in FILLABLE_KEYS
        if key != wire.KEY_STREAM
    )


def record_fills(
    records: list[dict[Any, Any]], tag: str, columns: Mapping[str, Sequence[object]] | None = None
) -> dict[str, dict[int, str]]:
    """Per key, the filled values by record index, for records decoded as Python dicts.
    ``columns``: their :data:`FILLABLE_KEYS` values by key, if at hand (:func:`usual_values`,
    looked at once a record has client metadata)."""
    out: dict[str, dict[int, str]] = {}
    usual: bool | None = None
    for i, rec in enumerate(records):
        if not has_client_keys(rec):
            continue
        if usual is None:
            usual = columns is not None and usual_values(columns)
        values = fills(
            rec if usual else present_keys(rec),
            rec.get(KEY_SOURCE),
            kube_of(rec.get(KEY_KUBERNETES)),
            rec.get(KEY_ECS_TASK_DEFINITION),
            rec.get(wire.KEY_CONTAINER_NAME),
            rec.get(wire.KEY_CONTAINER_ID),
            tag,
        )
        for key, value in values.items():
            out.setdefault(key, {})[i] = value
    return out

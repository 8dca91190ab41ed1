"""Buffered events -> the rows of ``envoy_access`` and ``container_logs``, in bulk.

A buffer segment holds Arrow batches of :data:`aggregator.decode.BUFFER_SCHEMA` (one row per
event: tag, event time, the wire keys). :func:`route` splits and types them with Arrow kernels:

* Envoy candidates: ``format`` starting with ``envoy``, or (unless ``format == "plain"``) an Envoy
  data plane told by its image or container name (:data:`ENVOY_IMAGE` and :data:`ENVOY_NAME`): an
  image mentioning ``envoy`` or ``istio-proxy``, or whose repository's last part is
  ``consul-dataplane`` or ``consul-dataplane-fips`` (Consul), ``kuma-dp`` (Kuma, Kong Mesh),
  ``emissary``, ``ambassador`` or ``aes`` (Emissary-ingress, Ambassador),
  ``ecs-service-connect-agent`` (ECS Service Connect) or, after a ``/``, ``proxyv2`` (Istio's
  ``istio/proxyv2``); a container name whose last ``/`` part
  (logq-shipper's CRI container names are ``<namespace>/<pod>/<container>``, and an
  ``envoy-gateway-...`` pod's other containers are not Envoy) mentions ``envoy`` or
  ``istio-proxy``, holds ``consul-dataplane`` or ``kuma-sidecar`` as ``-``-separated parts (so the
  Docker names of ECS tasks, ``ecs-<family>-<n>-consul-dataplane-<hex>``, match too), is ECS
  Service Connect's ``ecs-service-connect-<suffix>`` (alone or followed by Docker's ``-<hex>``),
  or is ``ambassador`` or ``emissary-ingress`` exactly (a word that apps use in their names too).
  Candidates are parsed by :mod:`.envoy` on every stream; on any but ``stderr`` those no format
  parses are counted per service (unless they are the data plane's own log lines:
  :mod:`.envoy_diagnostics`) and kept in ``container_logs``. On ``stderr``, where Envoy writes its
  own diagnostics (and an access logger may write to ``/dev/stderr``), a parsed line is an access
  line like any other and an unparsed one is kept in ``container_logs`` uncounted: the count means
  "access lines we could not read", and ``route`` reports one (0 included) for a service only for
  its candidates on other streams (the metric itself has a 0 series for every service with rows:
  :meth:`aggregator.metrics.Metrics.services_seen`). The first counted line of each service with
  failures comes along, cut short (:class:`UnparsedSample`), for the warning that shows what they
  look like.
* Everything else goes to ``container_logs``, timestamped with the event time.

A record without a container name whose tag is that of a tailed kubelet log (Fluent Bit's or
Fluentd's ``kube.var.log.containers.<pod>_<namespace>_<container>-<64 hex>.log``: no kubernetes
filter; that exact shape only) takes its container's name and id from the tag first
(:func:`with_tag_containers`).

The service of a row is the record's ``service`` (for other clients, filled from their metadata
at decode time: :mod:`.clientmeta`), else the last dot-separated part of the tag (the pod's
owner for a tailed kubelet log's tag, whose last part is always ``log``: :func:`tag_service`),
sanitised by :func:`athena.schema.sanitize_service` once per distinct value (a name stored under
a hash is said once in the log: :mod:`.stored_names`). Low-cardinality
columns stay dictionary-encoded from the wire to the Parquet file, and predicates on them are
computed once per distinct value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from aggregator import small_frames
from aggregator.decode import BUFFER_SCHEMA, from_ipc
from aggregator.envoy import BUILTIN_FORMATS, EnvoyFormat, parse_lines
from aggregator.envoy_diagnostics import diagnostic
from aggregator.stored_names import stored_service
from aggregator.tags import kubelet_log, tag_service
from athena.schema import CONTAINER_LOGS, ENVOY_ACCESS, TIMESTAMP, Table
from shipper import wire

#: Buffer frames decoded at once before their rows are joined into one table. A frame decoded
#: alone costs ~27 KB of Arrow and Python objects whatever its rows (its schema, nine
#: dictionaries, a dozen arrays), and a slice of a segment is cut by rows: 8,000 frames of two
#: lines each (1,000 quiet services, one small message per source) took 220 MiB to decode
#: together for a 3 MiB table, and 100,000 one-line frames would take ~2.7 GB.
FRAMES_AT_ONCE = 256


def records_table(payloads: Iterable[bytes]) -> pa.Table:
    """The buffer frames of a segment as one table with contiguous, unified columns, decoded
    :data:`FRAMES_AT_ONCE` at a time (memory follows the rows, not the number of frames)."""
    frames = iter(payloads)
    groups: list[pa.Table] = []
    while group := list(itertools.islice(frames, FRAMES_AT_ONCE)):
        groups.append(joined_tables(frame_tables(group)))
    return joined_tables(groups) if groups else BUFFER_SCHEMA.empty_table()


def frame_tables(payloads: list[bytes]) -> list[pa.Table]:
    """A table per IPC frame and per run of consecutive small frames (decoded together, ~15 µs
    a frame against ~90 µs for an IPC frame: :mod:`.small_frames`), in the frames' order."""
    tables: list[pa.Table] = []
    for small, run in itertools.groupby(payloads, small_frames.is_small):
        if small:
            tables.append(small_frames.run_table(list(run), BUFFER_SCHEMA))
        else:
            tables.extend(from_ipc(p) for p in run)
    return tables


def joined_tables(tables: list[pa.Table]) -> pa.Table:
    """Tables of one schema as one, each column one chunk with one dictionary."""
    return pa.concat_tables(tables).unify_dictionaries().combine_chunks()


def _col(table: pa.Table, name: str) -> pa.Array:
    column = table[name]
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _per_value(array: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``fn`` applied to a dictionary's values, then spread to the rows (or to plain rows)."""
    if isinstance(array, pa.DictionaryArray):
        return pc.take(fn(array.dictionary), array.indices)
    return fn(array)


def _tag_services(tags: pa.Array) -> pa.Array:
    """:func:`tag_service` of each value (called on a dictionary's few distinct tags)."""
    return pa.array([tag_service(t) for t in tags.to_pylist()], pa.string())


_TAG_CONTAINER = pa.struct(
    [(wire.KEY_CONTAINER_NAME, pa.string()), (wire.KEY_CONTAINER_ID, pa.string())]
)


def _containers_of(tags: pa.Array) -> pa.Array:
    """The container name and id of each tag (NULL for a tag that names no kubelet log)."""
    logs = [kubelet_log(t) for t in tags.to_pylist()]
    return pa.array(
        [(k.container_name, k.container_id) if k else None for k in logs], _TAG_CONTAINER
    )


def _tag_containers(tags: pa.Array) -> dict[str, pa.Array]:
    """Per row, the container name and id that a kubelet log's tag gives (NULL for others)."""
    logs = _per_value(tags, _containers_of)
    return {
        key: pc.struct_field(logs, key) for key in (wire.KEY_CONTAINER_NAME, wire.KEY_CONTAINER_ID)
    }


def _lacking(values: pa.Array) -> pa.Array:
    """Per row, whether the value is NULL or empty."""
    return pc.invert(pc.fill_null(pc.not_equal(values, ""), False))


def with_tag_containers(records: pa.Table) -> pa.Table:
    """``records`` with the container name and id of a tailed kubelet log's tag in the rows that
    lack them (NULL or empty): Fluent Bit without its kubernetes filter sends neither, and the
    name is what tells an Envoy sidecar (``istio-proxy``) whose access lines are parsed. A
    record that names its container keeps its own name and id (none: not the tag's, which
    could pair it with another container's id). Unchanged (no copy) when no tag is such a tag,
    the usual case."""
    names = _col(records, wire.KEY_CONTAINER_NAME)
    if not names.null_count and not pc.any(_per_value(names, lambda v: pc.equal(v, ""))).as_py():
        return records  # every record names its container (logq-shipper's do)
    from_tag = _tag_containers(_col(records, "tag"))
    if from_tag[wire.KEY_CONTAINER_NAME].null_count == records.num_rows:
        return records
    unnamed = _lacking(_per_value(names, lambda v: v))  # one naming its container keeps its id
    for key, given in from_tag.items():
        index = records.schema.get_field_index(key)
        current = _per_value(_col(records, key), lambda v: v)
        lacking = pc.and_(unnamed, _lacking(current))
        filled = pc.if_else(pc.and_(lacking, pc.is_valid(given)), given, current)
        field = records.schema.field(index)
        records = records.set_column(index, field, filled.cast(field.type))
    return records


def _names_no_service(values: pa.Array) -> pa.Array:
    """Per value, whether it names no service: NULL, empty or blank (only whitespace, as
    Python's ``str.isspace`` has it, which Arrow's ``utf8_is_space`` matches). One rule with
    :func:`shipper.discover.names_service`: a blank name would sanitise to nothing, then be
    stored as ``svc-<hash>``, one folder per run of spaces, rather than the tag's service."""
    blank = pc.or_(pc.equal(values, ""), pc.utf8_is_space(values))
    return pc.fill_null(blank, True)


def lacks_service(services: pa.Array) -> bool:
    """Whether any of ``services`` (a batch's ``service`` column) names no service, so that
    its record takes its tag's (:func:`service_column`)."""
    if services.null_count:
        return True
    return bool(pc.any(_per_value(services, _names_no_service)).as_py())


def service_column(records: pa.Table) -> pa.DictionaryArray:
    """Sanitised service per row: record ``service``, else (none, empty or blank) the tag's
    (:func:`tag_service`)."""
    service = _col(records, wire.KEY_SERVICE)
    if (
        isinstance(service, pa.DictionaryArray)
        and not service.null_count
        and not pc.any(_names_no_service(service.dictionary)).as_py()
    ):  # every record names its service (logq-shipper's do): no row needs its tag
        encoded = service
    else:
        tag_tail = _per_value(_col(records, "tag"), _tag_services)
        service = _per_value(service, lambda v: v)
        raw = pc.if_else(_names_no_service(service), tag_tail, service)
        encoded = pc.dictionary_encode(raw)
    names = [stored_service(v) for v in encoded.dictionary.to_pylist()]
    # Several raw names may sanitise to one: the dictionary gets each name once.
    unique = list(dict.fromkeys(names))
    index = {name: i for i, name in enumerate(unique)}
    indices = pc.take(pa.array([index[name] for name in names], pa.int32()), encoded.indices)
    return pa.DictionaryArray.from_arrays(indices, pa.array(unique, pa.string()))


def _flag(array: pa.Array, pattern: str) -> pa.Array:
    """Rows whose value matches ``pattern`` (case-insensitive); NULL rows are False."""
    matched = _per_value(array, lambda v: pc.match_substring_regex(v, pattern, ignore_case=True))
    return pc.fill_null(matched, False)


#: Images of Envoy data planes: any mentioning Envoy or Istio's proxy, and those named otherwise
#: by the last part of their repository (``hashicorp/consul-dataplane:1.5``,
#: ``kumahq/kuma-dp``, ``emissaryingress/emissary``, ``datawire/aes``, ECS Service Connect's
#: ``ecs-service-connect-agent:interface-v1``), so ``ambassador/ambassador-agent`` (not Envoy)
#: and a registry's host are not taken for one. Istio's sidecar image is ``istio/proxyv2``
#: (``gcr.io/istio-release/proxyv2``, ``-distroless`` tags), run in ECS or compose under any
#: container name: ``proxyv2`` is matched only after a ``/`` (a bare ``proxyv2`` says nothing
#: of Istio, ``haproxyv2`` is another program).
ENVOY_IMAGE = (
    r"envoy|istio-proxy"
    r"|(?:^|/)(?:consul-dataplane(?:-fips)?|kuma-dp|emissary|ambassador|aes"
    r"|ecs-service-connect-agent)"
    r"(?:[:@]|$)"
    r"|/proxyv2(?:[:@]|$)"
)
#: Container names of Envoy data planes, matched on the name's last ``/`` part (see the module
#: docstring): consul-k8s names its sidecar ``consul-dataplane`` (``consul-dataplane-<service>``
#: in a multi-port pod), consul-ecs ``consul-dataplane``, Kuma ``kuma-sidecar``; ECS Service
#: Connect ``ecs-service-connect-<suffix>``, alone or as Docker's name has it, with only
#: ``-<hex>`` after (Docker's names of ECS tasks begin ``ecs-<family>-``, so a family named
#: ``service-connect-nginx``, as in AWS's tutorial, gives its app containers names that begin
#: ``ecs-service-connect-``); Emissary's manifests ``ambassador``, its Helm chart
#: ``emissary-ingress``, matched whole (``brand-ambassador-api`` is an app).
ENVOY_NAME = (
    r"(?:envoy|istio-proxy)[^/]*$"
    r"|(?:^|[/-])(?:consul-dataplane|kuma-sidecar)(?:-[^/]*)?$"
    r"|(?:^|-)ecs-service-connect-[^/-]+(?:-[0-9a-f]+)?$"
    r"|(?:^|/)(?:ambassador|emissary-ingress)$"
)


def envoy_rows(records: pa.Table) -> tuple[pa.Array, pa.Array | None]:
    """Rows to try as Envoy access lines, and those of them on ``stderr`` (None when there are
    none, as in the usual batch), whose unparsed lines are not counted (module docstring)."""
    fmt = _col(records, wire.KEY_FORMAT)
    hinted = _flag(fmt, "^envoy")
    plain = _flag(fmt, "^plain$")
    named = pc.or_(
        _flag(_col(records, wire.KEY_IMAGE), ENVOY_IMAGE),
        _flag(_col(records, wire.KEY_CONTAINER_NAME), ENVOY_NAME),
    )
    candidate = pc.or_(hinted, pc.and_(named, pc.invert(plain)))
    on_stderr = pc.and_(candidate, _flag(_col(records, wire.KEY_STREAM), "^stderr$"))
    return candidate, (on_stderr if pc.any(on_stderr).as_py() else None)


#: Characters of an unparsed line kept as its service's sample (a line may be 256 KiB or more).
SAMPLE_CHARS = 300


class UnparsedSample(NamedTuple):
    """One counted Envoy candidate line that no format parsed: the warning that shows the
    on-call what such lines look like (:mod:`aggregator.parse_warnings`) needs one per service,
    not the whole line (the counter alone sent them digging in ``container_logs``)."""

    line: str
    """Its first :data:`SAMPLE_CHARS` characters, without a trailing newline."""
    chars: int
    """Its whole length in characters: more than ``len(line)`` when it was cut."""
    container_name: str | None
    """The container that wrote it (first :data:`SAMPLE_CHARS` characters): the one to label
    ``logq.format=plain`` if its lines are no access lines."""


@dataclass
class Routed:
    """The rows of one batch, per table, each with a ``service`` column for partitioning."""

    tables: dict[str, pa.Table]
    parse_failures: dict[str, int] = field(default_factory=dict)
    """Envoy candidates that no format parsed, per service (they are in container_logs)."""
    unparsed_samples: dict[str, UnparsedSample] = field(default_factory=dict)
    """The first of those lines per service with any (only those counted in
    ``parse_failures``: never a stderr line nor the data plane's own log line)."""
    numbers_rounded: dict[str, int] = field(default_factory=dict)
    """Envoy JSON access lines stored with a number rounded (one with a fraction in an integer
    column, :mod:`aggregator.envoy_json`), per service with any."""
    numbers_too_large: dict[str, int] = field(default_factory=dict)
    """Envoy JSON access lines stored with a number NULL, past its column's digits, per service
    with any."""


def route(records: pa.Table, formats: tuple[EnvoyFormat, ...] = BUILTIN_FORMATS) -> Routed:
    """Split and type a records table into ``envoy_access`` and ``container_logs`` rows."""
    tables: dict[str, pa.Table] = {}
    failures: dict[str, int] = {}
    samples: dict[str, UnparsedSample] = {}
    rounded: dict[str, int] = {}
    too_large: dict[str, int] = {}
    if records.num_rows == 0:
        return Routed(tables, failures)
    records = with_tag_containers(records.combine_chunks())
    service = service_column(records)
    mask, on_stderr = envoy_rows(records)
    candidates = pc.indices_nonzero(mask)
    plain_idx = pc.indices_nonzero(pc.invert(mask))
    if len(candidates):
        logs = _col(records, wire.KEY_LOG)
        parsed = parse_lines(logs if not len(plain_idx) else pc.take(logs, candidates), formats)
        # Every service with Envoy lines gets a count, 0 included: its metric series then
        # exists before the first failure (an alert on increase() needs that first sample).
        # Lines on stderr are never counted, so they give no series that could only stay 0.
        counted = _counted(candidates, on_stderr)
        candidate_services = pc.unique(_at(service, counted)).dictionary_decode()
        failures = dict.fromkeys(candidate_services.to_pylist(), 0)
        if len(parsed.rows):
            rows = _at(candidates, parsed.rows)
            cols = dict(parsed.columns)
            tables[ENVOY_ACCESS.name] = _assemble(ENVOY_ACCESS, records, service, rows, cols)
        rounded = _per_service(service, _at(candidates, parsed.rounded))
        too_large = _per_service(service, _at(candidates, parsed.too_large))
        if len(parsed.unparsed):
            bad = pc.take(candidates, parsed.unparsed)
            failed = _counted(bad, on_stderr)
            failed = failed.filter(pc.invert(diagnostic(pc.take(logs, failed))))
            counts = pc.value_counts(pc.take(service, failed).dictionary_decode())
            failures.update({c["values"].as_py(): c["counts"].as_py() for c in counts})
            samples = _samples(records, service, failed)
            merged = pa.concat_arrays([plain_idx, bad])
            plain_idx = merged.take(pc.sort_indices(merged))
    if len(plain_idx):
        ts = pc.cast(pc.divide(_col(records, "time_ns"), 1_000_000), pa.int64()).cast(TIMESTAMP)
        cols = {
            "timestamp": pc.take(ts, plain_idx),
            "message": _without_newline(pc.take(_col(records, wire.KEY_LOG), plain_idx)),
        }
        tables[CONTAINER_LOGS.name] = _assemble(CONTAINER_LOGS, records, service, plain_idx, cols)
    return Routed(tables, failures, samples, rounded, too_large)


def _per_service(service: pa.DictionaryArray, rows: pa.Array) -> dict[str, int]:
    """How many of ``rows`` each service has, for the services with any."""
    if not len(rows):
        return {}
    counts = pc.value_counts(pc.take(service, rows).dictionary_decode())
    return {c["values"].as_py(): c["counts"].as_py() for c in counts}


def _samples(
    records: pa.Table, service: pa.DictionaryArray, failed: pa.Array
) -> dict[str, UnparsedSample]:
    """The first of the ``failed`` rows (ascending) of each service, cut in Arrow: only a few
    rows become Python values, however many lines failed and however long they are."""
    if not len(failed):
        return {}
    codes = pc.take(service, failed).indices
    # index_in gives each distinct service's first position among the failed rows.
    rows = pc.take(failed, pc.index_in(pc.unique(codes), value_set=codes))
    lines = _without_newline(pc.take(_col(records, wire.KEY_LOG), rows))
    cut = pc.utf8_slice_codeunits(lines, 0, SAMPLE_CHARS).to_pylist()
    chars = pc.utf8_length(lines).to_pylist()
    containers = _per_value(
        pc.take(_col(records, wire.KEY_CONTAINER_NAME), rows),
        lambda v: pc.utf8_slice_codeunits(v, 0, SAMPLE_CHARS),
    ).to_pylist()
    return {
        svc: UnparsedSample(line or "", length or 0, container)
        for svc, line, length, container in zip(
            pc.take(service, rows).dictionary_decode().to_pylist(),
            cut,
            chars,
            containers,
            strict=True,
        )
    }


def _counted(rows: pa.Array, on_stderr: pa.Array | None) -> pa.Array:
    """``rows`` less those on stderr, whose unparsed lines are Envoy's own diagnostics."""
    return rows if on_stderr is None else rows.filter(pc.invert(pc.take(on_stderr, rows)))


def _without_newline(lines: pa.Array) -> pa.Array:
    """``lines`` without one trailing ``\n``: the ``log`` that Fluent Bit and Fluentd send from
    Docker's json-file still ends with it (logq-shipper sends lines without it)."""
    ends = pc.ends_with(lines, "\n")
    if not pc.any(ends).as_py():
        return lines
    return pc.if_else(ends, pc.utf8_slice_codeunits(lines, 0, -1), lines)


def _at(array: pa.Array, rows: pa.Array) -> pa.Array:
    """``array`` at ``rows`` (ascending, distinct): ``array`` itself when they are all of its
    rows, as in a batch of Envoy lines only (a take would copy every column for nothing)."""
    return array if len(rows) == len(array) else pc.take(array, rows)


def _assemble(
    table: Table,
    records: pa.Table,
    service: pa.DictionaryArray,
    rows: pa.Array,
    computed: dict[str, pa.Array],
) -> pa.Table:
    """The table's columns in schema order: computed ones, else the record column at ``rows``.

    String columns may stay dictionary-encoded (the writer stores them as Parquet strings);
    other types are cast to the schema's.
    """
    arrays = [_at(service, rows)]
    names = ["service"]
    for col in table.data_columns:
        array = computed[col.name] if col.name in computed else _at(_col(records, col.name), rows)
        if not (pa.types.is_dictionary(array.type) and array.type.value_type == col.arrow):
            array = array.cast(col.arrow)
        arrays.append(array)
        names.append(col.name)
    return pa.Table.from_arrays(arrays, names=names)

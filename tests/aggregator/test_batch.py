"""Routing buffered records into the two tables, service names, and the Parquet files written."""

from __future__ import annotations

import os
from pathlib import Path

import fastparquet
import pyarrow as pa
import pyarrow.parquet as pq

from aggregator.batch import SAMPLE_CHARS, UnparsedSample, records_table, route
from aggregator.decode import records_batch, to_ipc
from aggregator.writer import object_name, write_partitions
from athena.schema import CONTAINER_LOGS, ENVOY_ACCESS, parse_dt
from athena.warehouse import open_warehouse
from tests.aggregator.helpers import ENVOY_IMAGE, envoy_line, record

T0 = 1_795_860_000_000_000_000  # 2026-11-28T10:00:00Z in ns


def table_of(events: list[tuple[str, int, dict]]) -> pa.Table:
    return records_table([to_ipc(records_batch(tag, pa.array([t]), [r])) for tag, t, r in events])


def test_envoy_sidecar_lines_parse_and_app_lines_stay_plain() -> None:
    events = [
        ("logq.recipe", T0, record(envoy_line(), image=ENVOY_IMAGE, container_name="envoy")),
        ("logq.recipe", T0, record("GET /health 200", container_name="recipe-app")),
        ("logq.recipe", T0, record("[info] envoy started", image=ENVOY_IMAGE, stream="stderr")),
        ("logq.recipe", T0, record("garbage line", container_name="istio-proxy")),
        ("logq.recipe", T0, record(envoy_line(code=502), format="envoy")),
        ("logq.recipe", T0, record(envoy_line(), image=ENVOY_IMAGE, format="plain")),
    ]
    routed = route(table_of(events))
    envoy = routed.tables["envoy_access"]
    logs = routed.tables["container_logs"]
    assert envoy.column("response_code").to_pylist() == [200, 502]
    assert sorted(logs.column("message").to_pylist()) == sorted(
        ["GET /health 200", "[info] envoy started", "garbage line", envoy_line()]
    )
    assert routed.parse_failures == {"recipe": 1}
    # A service whose Envoy lines all parse is counted at 0 (its metric series exists).
    clean = route(
        table_of([("logq.cart", T0, record(envoy_line(), service="cart", format="envoy"))])
    )
    assert clean.parse_failures == {"cart": 0}
    assert (
        route(table_of([("logq.cart", T0, record("app line", service="cart"))])).parse_failures
        == {}
    )
    for table, spec in ((envoy, ENVOY_ACCESS), (logs, CONTAINER_LOGS)):
        assert table.column_names == ["service", *(c.name for c in spec.data_columns)]
        for f, c in zip(table.schema.remove(0), spec.data_columns, strict=True):
            assert (f.type.value_type if pa.types.is_dictionary(f.type) else f.type) == c.arrow


def test_service_from_record_else_tag_tail_sanitised() -> None:
    events = [
        ("logq.recipe", T0, {"log": "a"}),
        ("app.prod.Checkout", T0, {"message": "b"}),
        ("x", T0, {"log": "c", "service": "../../etc"}),
        ("x", T0, {"log": "d", "service": "Zürich/=Ü"}),
        ("x", T0, {"log": "e", "service": "日本"}),
    ]
    routed = route(table_of(events))
    logs = routed.tables["container_logs"]
    services = dict(zip(logs["message"].to_pylist(), logs["service"].to_pylist(), strict=True))
    assert services["a"] == "recipe"
    assert services["b"] == "checkout"
    assert services["c"] == "etc"
    assert services["d"] == "zurich_u"
    assert services["e"].startswith("svc-")
    for s in services.values():
        assert "/" not in s and not s.startswith(".") and "=" not in s


def test_records_from_other_clients_and_wrong_types_are_kept() -> None:
    events = [
        ("fluent.app", T0, {"message": "from fluent-logger", "level": "info"}),
        ("fluent.app", T0, {"event": "signup", "user": 7}),
        ("fluent.app", T0, {"log": {"nested": True}, "offset": "12", "service": 5}),
        ("fluent.app", T0, {"log": ["a", 1], "stream": "stdout"}),
        ("fluent.app", T0, {"log": b"\xff\xfebytes", "stream": "stdout"}),
        ("fluent.app", T0, {"log": "", "stream": "stdout", "offset": -5}),
    ]
    logs = route(table_of(events)).tables["container_logs"]
    messages = logs["message"].to_pylist()
    assert "from fluent-logger" in messages
    assert '{"event": "signup", "user": 7}' in messages
    assert '{"nested": true}' in messages
    assert "\ufffd\ufffdbytes" in messages
    assert "" in messages  # an empty line stays an empty line
    assert '["a", 1]' in messages
    assert logs.num_rows == 6


def test_the_trailing_newline_other_clients_send_is_not_stored() -> None:
    """Fluent Bit and Fluentd tailing json-file send Docker's ``log`` with its ``\n``; the
    table holds the line without it, as for logq-shipper's lines (Envoy lines parse either way)."""
    events = [
        ("docker.recipe", T0, {"log": "hello from fluent bit\n", "stream": "stdout"}),
        ("docker.recipe", T0, {"log": "two\n\n", "stream": "stdout"}),
        ("docker.recipe", T0, {"log": "no newline", "stream": "stderr"}),
        ("docker.recipe", T0, {"log": "\n", "stream": "stdout"}),
        ("docker.recipe", T0, {"log": "crlf\r\n", "stream": "stdout"}),
        ("docker.recipe", T0, {"log": envoy_line() + "\n", "format": "envoy"}),
        ("docker.recipe", T0, {"log": "not an access line\n", "format": "envoy"}),
    ]
    routed = route(table_of(events))
    assert routed.tables["envoy_access"].num_rows == 1
    assert sorted(routed.tables["container_logs"]["message"].to_pylist()) == sorted(
        ["hello from fluent bit", "two\n", "no newline", "", "crlf\r", "not an access line"]
    )


def test_partition_files_sorted_zstd_and_fastparquet_readable(tmp_path: Path) -> None:
    hour = 3600 * 10**9
    events = [
        ("logq.a", T0 + 2 * hour + 5, record("late", service="a")),
        ("logq.a", T0 + 3_000_000, record("first", service="a")),
        ("logq.a", T0 + 1_000_000, record("zeroth", service="a")),
        ("logq.b", T0, record("other", service="b")),
    ]
    routed = route(table_of(events))
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    name = object_name("node1", 7)
    written = write_partitions(wh, "container_logs", routed.tables["container_logs"], name)
    rel = sorted(os.path.relpath(w.path, wh.base) for w in written)
    assert rel == [
        "container_logs/service=a/dt=2026-11-28-10/node1-0000000000000007-0000.parquet",
        "container_logs/service=a/dt=2026-11-28-12/node1-0000000000000007-0000.parquet",
        "container_logs/service=b/dt=2026-11-28-10/node1-0000000000000007-0000.parquet",
    ]
    first = next(w.path for w in written if "service=a/dt=2026-11-28-10" in w.path)
    assert pq.read_table(first)["message"].to_pylist() == ["zeroth", "first"]
    meta = pq.ParquetFile(first).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    logical = str(meta.schema.column(0).logical_type)
    assert "isAdjustedToUTC=true" in logical and "timeUnit=milliseconds" in logical
    assert meta.schema.column(0).physical_type == "INT64"
    frame = fastparquet.ParquetFile(first).to_pandas()
    assert frame["message"].tolist() == ["zeroth", "first"]
    assert list(frame.columns) == [c.name for c in CONTAINER_LOGS.data_columns]
    # A replayed flush rewrites the same keys: still three files, no temp files left.
    write_partitions(wh, "container_logs", routed.tables["container_logs"], name)
    all_files = sorted(p.name for p in (tmp_path / "wh").rglob("*") if p.is_file())
    assert all_files == [name] * 3


def test_each_object_stores_only_the_names_its_own_rows_use(tmp_path: Path) -> None:
    """A partition's rows are a slice of the whole segment's table, whose dictionaries hold
    every service's hosts and containers. Each object must store only its own rows' names:
    with 1,000 services in a segment every object carried all the others' (a 6-row object
    took 25 KB, and the flush's work grew with the square of the services)."""
    events = [
        (
            "logq.s",
            T0 + i,
            record(
                f"line {i}",
                service=f"s{i % 40}",
                host=f"host-{i % 40}",
                container_id=f"{i % 40:064x}",
            ),
        )
        for i in range(200)
    ]
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    table = route(table_of(events)).tables["container_logs"]
    written = write_partitions(wh, "container_logs", table, object_name("node1", 7))
    assert len(written) == 40
    names = ["host", "container_id", "container_name"]
    for w in written:
        stored = pq.ParquetFile(w.path, read_dictionary=names).read()
        plain = pq.read_table(w.path)
        assert plain["message"].to_pylist() == [
            f"line {i}" for i in range(200) if i % 40 == int(w.service[1:])
        ]
        for name in names:
            (chunk,) = stored[name].chunks
            assert sorted(chunk.dictionary.to_pylist()) == sorted(set(plain[name].to_pylist()))
            assert len(chunk.dictionary) == 1


def test_envoy_rows_take_start_time_and_metadata(tmp_path: Path) -> None:
    rec = record(envoy_line(when="2026-11-28T09:59:59.999Z"), image=ENVOY_IMAGE)
    envoy = route(table_of([("logq.recipe", T0, rec)])).tables["envoy_access"]
    row = envoy.to_pylist()[0]
    assert row["timestamp"].isoformat() == "2026-11-28T09:59:59.999000+00:00"
    assert (row["host"], row["container_id"], row["container_name"]) == (
        "host-1",
        "c0ffee",
        "recipe-app",
    )


def test_far_years_get_four_digit_partitions_that_parse_back(tmp_path: Path) -> None:
    events = [
        ("logq.recipe", T0, record(envoy_line(when=when), image=ENVOY_IMAGE))
        for when in ("0001-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z")
    ]
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    envoy = route(table_of(events)).tables["envoy_access"]
    written = write_partitions(wh, "envoy_access", envoy, object_name("n", 1))
    assert sorted(w.dt for w in written) == ["0001-01-01-00", "9999-12-31-23"]
    assert [parse_dt(w.dt).year for w in sorted(written, key=lambda w: w.dt)] == [1, 9999]


def test_a_start_time_no_partition_can_hold_is_an_unparsed_line(tmp_path: Path) -> None:
    """Year 0 has no ``dt`` partition: such a line (text or JSON) is kept in container_logs and
    counted, and the batch around it is written (it used to fail the whole segment's flush)."""
    year_zero = "0000-01-01T00:00:00.000Z"
    json_line = (
        f'{{"start_time":"{year_zero}","method":"GET","path":"/","protocol":"HTTP/1.1",'
        '"response_code":200}'
    )
    events = [
        ("logq.recipe", T0, record(line, image=ENVOY_IMAGE))
        for line in (envoy_line(when=year_zero), json_line, envoy_line())
    ]
    routed = route(table_of(events))
    assert routed.parse_failures == {"recipe": 2}
    assert routed.tables["envoy_access"].num_rows == 1
    logs = routed.tables["container_logs"]
    assert sorted(logs["message"].to_pylist()) == sorted([envoy_line(when=year_zero), json_line])
    wh = open_warehouse(str(tmp_path / "wh"), create=True)
    for name, table in routed.tables.items():
        assert write_partitions(wh, name, table, object_name("n", 1))


def test_envoy_by_the_last_part_of_a_pod_container_name() -> None:
    """logq-shipper names a CRI container ``<namespace>/<pod>/<container>``: the sidecar is
    found by its own name, and a pod or namespace named after Envoy makes no other container
    of it an Envoy candidate."""
    pod = "envoy-gateway-system/envoy-gateway-5d8f7c9b6d-x2x7k"
    events = [
        ("logq.recipe", T0, record(envoy_line(), container_name="shop/recipe-5d8-x2x7k/envoy")),
        ("logq.recipe", T0, record(envoy_line(code=503), container_name="shop/r-x/istio-proxy")),
        ("logq.gw", T0, record(envoy_line(code=404), service="gw", container_name=f"{pod}/mgr")),
    ]
    routed = route(table_of(events))
    assert routed.tables["envoy_access"].column("response_code").to_pylist() == [200, 503]
    assert routed.tables["container_logs"].column("message").to_pylist() == [envoy_line(code=404)]
    assert routed.parse_failures == {"recipe": 0}


#: What Envoy writes about itself (its default log format): never a counted failure.
DIAG = "[2026-11-28 10:00:00.123][14][warning][config] [source/common/config/grpc.cc:1] gone"


def test_a_tailed_kubelet_log_tag_gives_the_pods_owner_not_log() -> None:
    """Fluent Bit's Kubernetes set-up tails ``/var/log/containers/*.log`` with ``Tag kube.*``
    (Fluentd: ``kubernetes.*``): the tag is the file's path with ``.`` for ``/``, so its last
    part is ``log`` for every pod. Records without the kubernetes filter's map (no filter, or
    the API server was unreachable) all landed in service ``log``; the file name holds the pod,
    whose owner is the service (DESIGN.md §2), as for logq-shipper's own lines. Only that exact
    shape: every other tag keeps the tag's last part, and a record's own service wins."""
    cid = "0123456789abcdef" * 4
    uid = "5f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    events = [
        (f"kube.var.log.containers.recipe-7d9c8b5f4-x2x7k_default_recipe-{cid}.log", T0,
         {"log": "a"}),
        (f"kubernetes.var.log.containers.db-0_shop_postgres-{cid}.log", T0, {"log": "b"}),
        (f"kubevar.log.containers.cart-5d8f7c9b6d-q4w2z_shop_cart-{cid}.log", T0, {"log": "c"}),
        (f"kube.var.log.containers.web-1.v2-x2x7k_default_web-{cid}.log", T0, {"log": "d"}),
        ("kube.var.log.containers.x.log", T0, {"log": "e"}),
        (f"kube.var.log.containers.recipe-7d9c8b5f4-x2x7k_default_recipe-{cid}.log", T0,
         {"log": "f", "service": "own"}),
        # Not that shape: the tag's last part, as DESIGN §2 says.
        (f"kube.var.log.pods.shop_cart-5d8f7c9b6d-q4w2z_{uid}.cart.0.log", T0, {"log": "g"}),
        (f"kube.var.log.containers.db-0_shop_postgres-{cid[:63]}.log", T0, {"log": "h"}),
        (f"kube.var.log.containers.db-0_shop_postgres-{cid.upper()}.log", T0, {"log": "i"}),
        (f"kube.var.log.containers.Db-0_shop_postgres-{cid}.log", T0, {"log": "j"}),
        (f"kube.var.log.containers.db-0_shop_postgres-{cid}.log.gz", T0, {"log": "k"}),
        (f"app.containers.db-0_shop_postgres-{cid}.log", T0, {"log": "l"}),
        (f"kube.var.log.containers.db-0_shop_-{cid}.log", T0, {"log": "m"}),
        (f"kube.var.log.containers.db-0_shop_postgres_{cid}.log", T0, {"log": "n"}),
        (f"kube.var.log.containers.db-0_postgres-{cid}.log", T0, {"log": "o"}),
        ("docker.recipe", T0, {"log": "p"}),
    ]  # fmt: skip
    logs = route(table_of(events)).tables["container_logs"]
    services = dict(zip(logs["message"].to_pylist(), logs["service"].to_pylist(), strict=True))
    assert services == {
        "a": "recipe", "b": "db", "c": "cart", "d": "web-1.v2", "e": "log", "f": "own",
        "g": "log", "h": "log", "i": "log", "j": "log", "k": "gz", "l": "log", "m": "log",
        "n": "log", "o": "log", "p": "recipe",
    }  # fmt: skip


def test_a_tailed_kubelet_log_tag_names_the_container_so_sidecars_parse() -> None:
    """Without the kubernetes filter, a Fluent Bit record of an Istio sidecar has no image nor
    container name: its access lines stayed unparsed in ``container_logs``. The tag names the
    container (and its id), as logq-shipper names it: ``<namespace>/<pod>/<container>``. A
    record's own ``container_name`` still wins, and with it its own (here: no) id."""
    cid = "ab" * 32
    uid = "5f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    events = [
        (f"kube.var.log.containers.cart-5d8f7c9b6d-q4w2z_shop_istio-proxy-{cid}.log", T0,
         {"log": envoy_line(code=201), "stream": "stdout"}),
        (f"kube.var.log.pods.shop_cart-5d8f7c9b6d-q4w2z_{uid}.istio-proxy.0.log", T0,
         {"log": envoy_line(code=202), "stream": "stdout"}),
        (f"kube.var.log.containers.cart-5d8f7c9b6d-q4w2z_shop_cart-{cid}.log", T0,
         {"log": "app line", "container_name": "mine"}),
        ("logq.recipe", T0, {"log": "plain"}),
    ]  # fmt: skip
    routed = route(table_of(events))
    envoy = routed.tables["envoy_access"].to_pylist()
    keys = ("response_code", "service", "container_name", "container_id")
    assert [tuple(r[k] for k in keys) for r in envoy] == [
        (201, "cart", "shop/cart-5d8f7c9b6d-q4w2z/istio-proxy", cid),
    ]  # fmt: skip
    logs = routed.tables["container_logs"].to_pylist()
    assert [(r["message"], r["container_name"], r["container_id"]) for r in logs] == [
        (envoy_line(code=202), None, None), ("app line", "mine", None), ("plain", None, None)
    ]  # fmt: skip


def test_each_service_with_failures_gets_its_first_counted_line_as_sample() -> None:
    """The sample is a line the counter counted: not one on stderr, not the data plane's own
    log line, not an app's line; the first such line of each service, without its newline."""
    envoy = {"image": ENVOY_IMAGE, "container_name": "envoy"}
    events = [
        ("logq.recipe", T0, record("stderr noise", stream="stderr", **envoy)),
        ("logq.recipe", T0, record(DIAG, **envoy)),
        ("logq.recipe", T0, record("plain app line", container_name="recipe-app")),
        ("logq.recipe", T0, record(envoy_line(), **envoy)),
        ("logq.recipe", T0, record("first bad access line\n", **envoy)),
        ("logq.cart", T0, record("cart bad line", service="cart", format="envoy")),
        ("logq.recipe", T0, record("second bad access line", **envoy)),
        ("logq.ok", T0, record(envoy_line(), service="ok", format="envoy")),
    ]
    routed = route(table_of(events))
    assert routed.parse_failures == {"recipe": 2, "cart": 1, "ok": 0}
    assert routed.unparsed_samples == {
        "recipe": UnparsedSample("first bad access line", 21, "envoy"),
        "cart": UnparsedSample("cart bad line", 13, "cart-app"),
    }


def test_no_sample_when_the_only_unparsed_lines_are_not_counted() -> None:
    envoy = {"image": ENVOY_IMAGE, "container_name": "envoy"}
    events = [
        ("logq.recipe", T0, record("stderr noise", stream="stderr", **envoy)),
        ("logq.recipe", T0, record(DIAG, **envoy)),
        ("logq.recipe", T0, record(envoy_line(), **envoy)),
    ]
    routed = route(table_of(events))
    assert routed.parse_failures == {"recipe": 0}
    assert routed.unparsed_samples == {}


def test_a_long_sample_is_cut_in_characters_and_keeps_its_length() -> None:
    line = "é\x1b[31m" + "x" * (1 << 20)
    routed = route(table_of([("logq.recipe", T0, record(line, format="envoy"))]))
    (sample,) = routed.unparsed_samples.values()
    assert sample.line == line[:SAMPLE_CHARS]
    assert sample.chars == len(line)


def test_a_default_line_with_fields_added_is_a_counted_unparsed_line() -> None:
    """A sidecar whose format adds quoted fields to Envoy's default one, not given with
    ``--envoy-format``: its lines are kept whole in container_logs, counted, and one is the
    warning's sample (that tells what format to add), not stored with shifted columns."""
    envoy = {"image": ENVOY_IMAGE, "container_name": "envoy"}
    longer = envoy_line() + ' "outbound|80||shop.default" "-"'
    events = [
        ("logq.recipe", T0, record(envoy_line(), **envoy)),
        ("logq.recipe", T0, record(longer + "\n", **envoy)),
    ]
    routed = route(table_of(events))
    assert routed.tables["envoy_access"].num_rows == 1
    assert routed.tables["container_logs"].column("message").to_pylist() == [longer]
    assert routed.parse_failures == {"recipe": 1}
    assert routed.unparsed_samples == {"recipe": UnparsedSample(longer, len(longer), "envoy")}

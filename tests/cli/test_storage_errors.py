"""S3 failures say what to check, a missing bucket is named, and `logq ddl` never hides either.

Against a real SeaweedFS (wrong credentials, a bucket that does not exist, an endpoint where
nothing listens), because the messages come from pyarrow's S3 client and only the real thing
answers the way AWS does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cli.storage import advice
from tests.support.listing import without_override
from tests.support.procs import console_script, free_port

CREDENTIALS = "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("logq: error: "), stderr
    return lines[0]


def test_advice_names_the_settings_for_the_auditors_message() -> None:
    """The exact line an auditor saw with wrong credentials, now followed by what to check."""
    message = (
        "When listing objects under key 'wh/envoy_access/' in bucket 'b': AWS Error "
        "ACCESS_DENIED during ListObjectsV2 operation: Access Denied."
    )
    hint = advice(message)
    assert hint is not None and hint.startswith(CREDENTIALS)
    assert "AWS_ENDPOINT_URL" in hint and "LOGQ_WAREHOUSE" in hint
    network = advice("AWS Error NETWORK_CONNECTION during ListObjectsV2 operation: curlCode: 7")
    assert network is not None and network.startswith("check AWS_ENDPOINT_URL")
    assert advice("[Errno 2] No such file or directory: 'x'") is None


@pytest.mark.s3
@pytest.mark.integration
def test_wrong_credentials_query_says_what_to_check(
    logq, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for args in (["errors"], ["sql", "SELECT count(*) FROM envoy_access"], ["services"]):
        run = logq(*args, "--warehouse", s3_warehouse)
        assert run.exit_code == 1, (args, run.stdout, run.stderr)
        line = _one_error_line(run.stderr)
        assert "AWS Error" in line, line  # the S3 error itself is kept
        assert CREDENTIALS in line and "AWS_ENDPOINT_URL" in line, line
        assert "--warehouse / LOGQ_WAREHOUSE" in line, line
        assert run.stdout == ""


@pytest.mark.s3
@pytest.mark.integration
def test_unreachable_endpoint_names_the_endpoint(
    logq, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    run = logq("errors", "--warehouse", s3_warehouse)
    assert run.exit_code == 1, run.stdout
    line = _one_error_line(run.stderr)
    assert f"check AWS_ENDPOINT_URL ({endpoint}) and the network" in line, line


@pytest.mark.s3
@pytest.mark.integration
def test_missing_bucket_is_an_error_not_no_data(logq, seaweedfs, s3_env) -> None:
    uri = "s3://logq-no-such-bucket-4711/wh"
    for args in (
        ["errors", "--since", "1h"],
        ["tail"],
        ["services"],
        ["sql", "SELECT count(*) AS n FROM envoy_access"],
        ["ddl"],
    ):
        run = logq(*args, "--warehouse", uri)
        assert run.exit_code == 1, (args, run.stdout, run.stderr)
        line = _one_error_line(run.stderr)
        assert "the bucket 'logq-no-such-bucket-4711'" in line and "does not exist" in line, line
        assert "no envoy_access data" not in run.stdout + run.stderr
        assert "CREATE EXTERNAL TABLE" not in run.stdout


@pytest.mark.s3
@pytest.mark.integration
def test_ddl_with_wrong_credentials_prints_no_placeholder_ddl(
    logq, s3_warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: exit 0 and DDL whose service enum was 'unknown' (every Athena query empty)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    run = logq("ddl", "--warehouse", s3_warehouse)
    assert run.exit_code == 1
    assert run.stdout == ""
    line = _one_error_line(run.stderr)
    assert CREDENTIALS in line and "AWS_ENDPOINT_URL" in line and "LOGQ_WAREHOUSE" in line


@pytest.mark.s3
@pytest.mark.integration
def test_ddl_of_an_empty_bucket_warns_about_the_placeholder(logq, s3_warehouse: str) -> None:
    run = logq("ddl", "--warehouse", s3_warehouse)
    assert run.exit_code == 0, run.stderr
    assert run.stdout.count("CREATE EXTERNAL TABLE") == 2
    assert "logq: warning:" in run.stderr and "placeholder" in run.stderr
    assert "--athena-database" in run.stderr


def test_ddl_of_an_empty_local_warehouse_warns(logq, empty_warehouse: str) -> None:
    run = logq("ddl", "--warehouse", empty_warehouse)
    assert run.exit_code == 0
    warning = [ln for ln in run.stderr.splitlines() if ln.startswith("logq: warning:")]
    assert len(warning) == 1, run.stderr
    assert "holds no services yet" in warning[0] and "apply `logq ddl` again" in warning[0]


FIX = "check --warehouse / LOGQ_WAREHOUSE"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("typo", f"does not exist; {FIX}, or run `logq demo` to make one"),
        ("a-file", f"is a file, not a directory; {FIX}"),  # no demo to make over a file
    ],
)
def test_ddl_of_a_local_warehouse_that_is_no_folder_is_refused(
    logq, tmp_path, name: str, problem: str
) -> None:
    """A mistyped --warehouse (or a file) was listed as empty: "holds no services yet", the
    placeholder DDL and exit 0, where the query commands say what is wrong (exit 2)."""
    (tmp_path / "a-file").write_text("x")
    run = logq("ddl", "--warehouse", str(tmp_path / name))
    assert run.exit_code == 2, run.stderr
    assert run.stdout == ""
    assert _one_error_line(run.stderr) == f"logq: error: the warehouse {tmp_path / name} {problem}"
    given = logq("ddl", "--warehouse", str(tmp_path / name), "-s", "recipe")  # nothing to list
    assert given.exit_code == 0 and given.stdout.count("CREATE EXTERNAL TABLE") == 2


def test_a_warehouse_this_user_may_not_read_is_a_usage_error_saying_what_to_do(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """A warehouse folder denied to the user running ``logq`` (the aggregator's ``umask
    077``, README) failed with Arrow's "[Errno 13] Failed getting information for path
    '.../envoy_access'. Detail: [errno 13] Permission denied" (exit 1): now the folder, the
    user and what to do, as ``logq-aggregator compact`` says it (exit 2: the command or the
    folder must change)."""
    warehouse = tmp_path / "wh"
    (warehouse / "envoy_access").mkdir(parents=True)
    warehouse.chmod(0o600)  # read and write for its owner, no search (x): nobody enters it
    env = subprocess_env | {"LOGQ_CACHE_DIR": str(tmp_path / "cache")}
    try:
        done = subprocess.run(
            [
                *without_override(),
                str(console_script("logq")),
                "errors",
                "--warehouse",
                str(warehouse),
                "--since",
                "1h",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        warehouse.chmod(0o755)
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = _one_error_line(done.stderr)
    assert line.startswith(
        f"logq: error: the warehouse {warehouse} cannot be read by this user (uid "
        f"{os.geteuid()}, gid {os.getegid()}): permission denied; "
    ), line
    assert line.endswith("or run as the user that owns it"), line


def test_ddl_with_services_does_not_warn(logq, warehouse) -> None:
    run = logq("ddl", "--warehouse", warehouse.uri)
    assert "'projection.service.values' = 'billing,recipe,users'" in run.stdout
    assert "warning" not in run.stderr
    named = logq("ddl", "--warehouse", "s3://bucket/wh", "-s", "recipe")
    assert named.exit_code == 0 and "warning" not in named.stderr


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3:/mybucket/logs", "is not an S3 address; write s3://BUCKET/PREFIX"),
        ("s3:///x", "names no bucket"),
        ("s3://bucket//wh", "has an empty folder name (//)"),
        ("file:///", "is the root of the file system"),
        ("", "is empty"),
    ],
)
def test_mistyped_warehouses_are_usage_errors(logq, uri: str, message: str) -> None:
    """Each was taken as something else: a local folder 's3:', the root, bucket 'x', or
    LOGQ_WAREHOUSE instead of the empty --warehouse given."""
    run = logq("errors", "--warehouse", uri)
    assert run.exit_code == 2 and message in run.stderr, run.stderr


def test_a_blank_logq_warehouse_is_refused(logq, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set but empty (a template filled from an unset variable): the default would put the
    warehouse on the container's own disk."""
    for blank in ("", " "):
        monkeypatch.setenv("LOGQ_WAREHOUSE", blank)
        run = logq("services")
        assert run.exit_code == 2, run.stderr
        assert "LOGQ_WAREHOUSE" in run.stderr and "empty" in run.stderr, run.stderr


def test_ddl_over_athenas_query_limit_warns_with_the_size_and_what_to_do(logq) -> None:
    """Defect: 2,100 names of 128 characters made DDL over Athena's 262,144-byte limit, printed
    without a word: Athena refused it when applied. Now stderr says so (the DDL still prints)."""
    names = ",".join(f"{i:04d}" + "s" * 124 for i in range(2100))
    run = logq("ddl", "--warehouse", "s3://bucket/wh", "-s", names)
    assert run.exit_code == 0 and run.stdout.count("CREATE EXTERNAL TABLE") == 2
    warning = [ln for ln in run.stderr.splitlines() if ln.startswith("logq: warning:")]
    assert len(warning) == 1, run.stderr
    assert "service enum of 2,100 names makes a DDL statement of 27" in warning[0]
    assert "over Athena's 262,144-byte query limit: Athena refuses it" in warning[0]
    assert "logq.service" in warning[0]

"""The S3 fixtures really reach SeaweedFS: signed requests, pyarrow's S3 filesystem, isolation."""

from __future__ import annotations

import urllib.request

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from athena.warehouse import open_warehouse

pytestmark = [pytest.mark.s3, pytest.mark.integration]


def test_warehouse_writes_and_lists_parquet_in_seaweedfs(s3_warehouse: str, seaweedfs) -> None:
    wh = open_warehouse(s3_warehouse)
    assert wh.is_s3
    table = pa.table({"n": pa.array([1, 2, 3], pa.int64()), "s": ["a", None, "c"]})
    path = wh.path("envoy_access", "service=recipe", "dt=2026-01-02-03", "part-0.parquet")
    with wh.fs.open_output_stream(path) as out:
        pq.write_table(table, out, compression="zstd")

    import pyarrow.fs as pafs

    listed = wh.fs.get_file_info(pafs.FileSelector(wh.path("envoy_access"), recursive=True))
    files = [i.path for i in listed if i.type == pafs.FileType.File]
    assert files == [path]
    assert pq.read_table(path, filesystem=wh.fs).equals(table)

    # The object is really in the bucket, seen through a second, independent client.
    bucket, _, prefix = s3_warehouse.removeprefix("s3://").partition("/")
    keys = [o["Key"] for o in seaweedfs.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"{prefix}/envoy_access/service=recipe/dt=2026-01-02-03/part-0.parquet"]


def test_each_warehouse_gets_its_own_bucket(s3_warehouse: str, seaweedfs) -> None:
    bucket = s3_warehouse.removeprefix("s3://").split("/")[0]
    assert seaweedfs.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_requests_are_really_authenticated(seaweedfs) -> None:
    bad = boto3.client(
        "s3",
        endpoint_url=seaweedfs.endpoint,
        aws_access_key_id="nobody",
        aws_secret_access_key="wrong-secret",
        region_name=seaweedfs.region,
    )
    with pytest.raises(ClientError):
        bad.list_buckets()


def test_s3_env_sets_the_standard_variables(s3_env: dict[str, str], seaweedfs) -> None:
    import os

    assert s3_env["AWS_ENDPOINT_URL"] == seaweedfs.endpoint
    for name, value in s3_env.items():
        assert os.environ[name] == value
    # A default boto3 client (no arguments) now lands on SeaweedFS.
    assert "Buckets" in boto3.client("s3").list_buckets()


def test_moto_server_answers_athena_api(moto_server: str) -> None:
    athena = boto3.client(
        "athena",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    athena.create_work_group(Name="logq-tests")
    names = [w["Name"] for w in athena.list_work_groups()["WorkGroups"]]
    assert "logq-tests" in names
    with urllib.request.urlopen(f"{moto_server}/moto-api/", timeout=5) as resp:
        assert resp.status == 200

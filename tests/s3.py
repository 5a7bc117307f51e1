"""A real S3 API for tests: ``moto_server`` started on 127.0.0.1 by a session fixture.

Only the plain S3 API is used (PUT/GET/LIST/DELETE): correctness never rests on the server's
conditional writes, which are not race-safe there. ``s3_storage`` points a test's settings at
a fresh bucket through the same variables a deployment sets (``RAYORCH_STORAGE_URL``,
``AWS_ENDPOINT_URL``, ``AWS_*`` credentials).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL of a moto S3 server owned by this test session."""
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server not found: install the test extras (moto[server])")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on {url} (exit {proc.poll()})")
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture()
def s3_storage(s3_server, home, monkeypatch):
    """RAYORCH_STORAGE_URL on a fresh bucket of the test S3 server; returns the URL."""
    import boto3

    bucket = f"rayorch-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/rayorch"
    monkeypatch.setenv("RAYORCH_STORAGE_URL", url)
    return url
